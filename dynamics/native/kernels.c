/* Fused CPU kernels for the recorder's per-step statistics (float32 data, C11).
 *
 * Each function does in one pass what the torch implementation does in several small operations; on a CPU
 * the recorder's cost is dominated by the number of operations per step, not by arithmetic. Loaded with
 * ctypes by dynamics/native/__init__.py, which also says how results map onto the recorded variables.
 *
 * Accuracy: activation moments add float32 partial sums of at most CHUNK consecutive entries of a row (or of
 * two rows) into double accumulators, around a shift (the first row's mean) so that the variance does not
 * cancel: each vector lane sums at most 2 CHUNK / 16 entries in float32 (the standard deviation then agrees
 * with float64 to ~1e-7; 1024 rather than 256 makes the pass ~20% faster); parameter norms, distances and
 * sketch projections accumulate every product in double.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define CHUNK 1024

#define RULE_LOW 1
#define RULE_HIGH 2

/* Whether v is outside the flat region: (no low or v > low) and (no high or v < high). */
#define OUTSIDE(v) ((!(rule & RULE_LOW) || (v) > low) & (!(rule & RULE_HIGH) || (v) < high))

/* Rows r0..r1 of a (rows, cols) activation: flat-region counts and per-unit activity and/or moments.
 * active[c] is set to 1 where some row is OUTSIDE the flat region; acc += [entries outside, sum of (v - shift),
 * sum of (v - shift)^2]. Rows go in pairs, so that each update of the unit mask serves two entries. */
static inline __attribute__((always_inline)) void activation_rows(
    const float *y, int64_t r0, int64_t r1, int64_t cols, int rule, float low, float high, int counts, int moments,
    float shift, float *active, double *acc) {
    for (int64_t r = r0; r < r1; r += 2) {
        const float *row = y + r * cols;
        const float *next = r + 1 < r1 ? row + cols : NULL;
        for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
            const int64_t c1 = c0 + CHUNK < cols ? c0 + CHUNK : cols;
            float s = 0.0f, ss = 0.0f;
            int32_t n = 0;
            if (next) {
#pragma omp simd reduction(+ : s, ss, n)
                for (int64_t c = c0; c < c1; c++) {
                    const float v = row[c], w = next[c];
                    if (moments) {
                        const float d = v - shift, e = w - shift;
                        s += d + e;
                        ss += d * d + e * e;
                    }
                    if (counts) {
                        const int in = OUTSIDE(v), in_next = OUTSIDE(w);
                        n += in + in_next;
                        active[c] = (in | in_next) ? 1.0f : active[c];
                    }
                }
            } else {
#pragma omp simd reduction(+ : s, ss, n)
                for (int64_t c = c0; c < c1; c++) {
                    const float v = row[c];
                    if (moments) {
                        const float d = v - shift;
                        s += d;
                        ss += d * d;
                    }
                    if (counts) {
                        const int in = OUTSIDE(v);
                        n += in;
                        active[c] = in ? 1.0f : active[c];
                    }
                }
            }
            acc[0] += (double)n;
            acc[1] += s;
            acc[2] += ss;
        }
    }
}

typedef void (*rows_function)(const float *, int64_t, int64_t, int64_t, float, float, float, float *, double *);

#define ROWS(NAME, RULE, COUNTS, MOMENTS)                                                                           \
    static void NAME(const float *y, int64_t r0, int64_t r1, int64_t cols, float low, float high, float shift,      \
                     float *active, double *acc) {                                                                  \
        activation_rows(y, r0, r1, cols, RULE, low, high, COUNTS, MOMENTS, shift, active, acc);                     \
    }
ROWS(rows_low, RULE_LOW, 1, 1)
ROWS(rows_high, RULE_HIGH, 1, 1)
ROWS(rows_both, RULE_LOW | RULE_HIGH, 1, 1)
ROWS(rows_low_counts, RULE_LOW, 1, 0)
ROWS(rows_high_counts, RULE_HIGH, 1, 0)
ROWS(rows_both_counts, RULE_LOW | RULE_HIGH, 1, 0)
ROWS(rows_moments, 0, 0, 1)

#define MAX_THREADS 64
#define PARALLEL_MIN 32768 /* entries below which one thread does an activation pass */
#define TENSORS_PARALLEL_MIN 16384 /* entries below which one thread does the norms or a sketch (shared out by
                                    * tensor: on 23k parameters a second thread saves about a third) */

/* The team for a pass over `tensors` tensors of numel[i] entries each: `threads`, or 1 for a small total. */
static int tensors_team(int64_t tensors, const int64_t *numel, int threads) {
    int64_t entries = 0;
    for (int64_t i = 0; i < tensors; i++) entries += numel[i];
    return threads < 1 || entries < TENSORS_PARALLEL_MIN ? 1 : threads;
}

/* out = [entries outside the flat region, active units, sum, sum of squared deviations from the mean];
 * active[c] = 1 where some row is outside the flat region at column c, else 0. rule has RULE_LOW and/or
 * RULE_HIGH set; counts/moments select which halves are computed (the other half of out, and active, are
 * left alone). With threads > 1 (and OpenMP: the team of the already loaded runtime, torch's) the rows are
 * split in contiguous blocks, as torch splits the elementwise operation that wrote them, so each thread
 * reads what its core wrote; scratch holds (threads - 1) * cols floats for the other threads' unit masks.
 * Partial sums are combined in thread order, so a result depends only on the data and the thread count. */
void activation_stats_f32(const float *y, int64_t rows, int64_t cols, int rule, float low, float high,
                          int counts, int moments, float *active, float *out, int threads, float *scratch) {
    if (rows * cols == 0) return;
    rows_function pass;
    if (counts && moments) pass = rule == RULE_LOW ? rows_low : rule == RULE_HIGH ? rows_high : rows_both;
    else if (counts) pass = rule == RULE_LOW ? rows_low_counts : rule == RULE_HIGH ? rows_high_counts : rows_both_counts;
    else if (moments) pass = rows_moments;
    else return;
    float shift = 0.0f; /* the first row's mean: close to the overall mean, so the shifted sums do not cancel */
    if (moments) {
        double first = 0.0;
        for (int64_t c = 0; c < cols; c++) first += (double)y[c];
        shift = (float)(first / (double)cols);
    }
    int team = threads < MAX_THREADS ? threads : MAX_THREADS;
    if (team > rows) team = (int)rows;
    if (team < 1 || rows * cols < PARALLEL_MIN || !scratch) team = 1;
    double acc[MAX_THREADS][3];
    memset(acc, 0, sizeof acc);
    int used = 1; /* the team the runtime gave (fewer than asked when nested, one without OpenMP) */
#pragma omp parallel num_threads(team) if (team > 1)
    {
        int t = 0, size = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        size = omp_get_num_threads();
#endif
        if (t == 0) used = size;
        float *mask = t == 0 ? active : scratch + (int64_t)(t - 1) * cols;
        if (counts) memset(mask, 0, (size_t)cols * sizeof(float));
        const int64_t r0 = rows * t / size, r1 = rows * (t + 1) / size;
        pass(y, r0, r1, cols, low, high, shift, mask, acc[t]);
    }
    double inside = 0.0, sum = 0.0, sum_sq = 0.0;
    for (int t = 0; t < used; t++) {
        inside += acc[t][0];
        sum += acc[t][1];
        sum_sq += acc[t][2];
    }
    if (counts) {
        for (int t = 1; t < used; t++)
            for (int64_t c = 0; c < cols; c++) active[c] = active[c] > 0.0f ? active[c] : scratch[(t - 1) * cols + c];
        int64_t units = 0;
        for (int64_t c = 0; c < cols; c++) units += active[c] > 0.0f;
        out[0] = (float)inside;
        out[1] = (float)units;
    }
    if (moments) {
        const double entries = (double)(rows * cols);
        out[2] = (float)((double)shift * entries + sum);
        out[3] = (float)(sum_sq - sum * sum / entries);
    }
}

/* Norms of one tensor x of n entries, accumulated in double: acc[0] += |x|^2 (NORM), acc[1] += |x - a|^2
 * (DIST), acc[2] += |x - b|^2 (UPDATE), reading x once. */
static inline __attribute__((always_inline)) void tensor_norms(const float *x, const float *a, const float *b,
                                                               int64_t n, int norm, int dist, int update,
                                                               double *acc) {
    double s0 = 0.0, s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s0, s1, s2)
    for (int64_t e = 0; e < n; e++) {
        const double v = (double)x[e];
        if (norm) s0 += v * v;
        if (dist) {
            const double d = v - (double)a[e];
            s1 += d * d;
        }
        if (update) {
            const double d = v - (double)b[e];
            s2 += d * d;
        }
    }
    acc[0] = s0;
    acc[1] = s1;
    acc[2] = s2;
}

typedef void (*norms_function)(const float *, const float *, const float *, int64_t, double *);

#define NORMS(NAME, NORM, DIST, UPDATE)                                                                          \
    static void NAME(const float *x, const float *a, const float *b, int64_t n, double *acc) {                 \
        tensor_norms(x, a, b, n, NORM, DIST, UPDATE, acc);                                                       \
    }
NORMS(norms_n, 1, 0, 0)
NORMS(norms_d, 0, 1, 0)
NORMS(norms_nd, 1, 1, 0)
NORMS(norms_u, 0, 0, 1)
NORMS(norms_nu, 1, 0, 1)
NORMS(norms_du, 0, 1, 1)
NORMS(norms_ndu, 1, 1, 1)
static const norms_function NORMS_BY_KIND[8] = {0, norms_n, norms_d, norms_nd, norms_u, norms_nu, norms_du, norms_ndu};

/* For each tensor x_i, whichever outputs are not NULL: norm[i] = |x_i|, dist[i] = |x_i - a_i| (a not NULL),
 * update[i] = |x_i - b_i| (b not NULL; with copy, b_i = x_i afterwards, while both are in cache), in one read of
 * x_i, accumulated in double. Tensors are shared out over `threads` (OpenMP, torch's team; tensors_team). */
void norms_f32(int64_t tensors, const float *const *x, const int64_t *numel, float *norm, const float *const *a,
               float *dist, float *const *b, float *update, int copy, int threads) {
    const int kind = (norm ? 1 : 0) | (dist && a ? 2 : 0) | (update && b ? 4 : 0);
    if (!kind) return;
    const norms_function pass = NORMS_BY_KIND[kind];
    const int team = tensors_team(tensors, numel, threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team) if (team > 1)
    for (int64_t i = 0; i < tensors; i++) {
        double acc[3];
        pass(x[i], a ? a[i] : 0, b ? b[i] : 0, numel[i], acc);
        if (norm) norm[i] = (float)__builtin_sqrt(acc[0]);
        if (kind & 2) dist[i] = (float)__builtin_sqrt(acc[1]);
        if (kind & 4) {
            update[i] = (float)__builtin_sqrt(acc[2]);
            if (copy) memcpy(b[i], x[i], (size_t)numel[i] * sizeof(float));
        }
    }
}

/* dst_i[e] = src_i[e] for each tensor i. */
void copy_tensors_f32(int64_t tensors, float *const *dst, const float *const *src, const int64_t *numel) {
    for (int64_t i = 0; i < tensors; i++) memcpy(dst[i], src[i], (size_t)numel[i] * sizeof(float));
}

/* The sketch from raw per-direction sums: projection = raw * scale - origin (origin may be NULL) and
 * total[j] = sum_i weights[i, j] * projection[i, j], in double. Matrices are (tensors, k), row-major.
 * Written where not NULL: projection and total in double, and out = [projection, total] in float32. */
static void finish_sketch(int64_t tensors, int64_t k, const double *raw, const double *scale, const double *origin,
                          const double *weights, double *projection, double *total, float *out) {
    for (int64_t j = 0; j < k; j++) {
        double sum = 0.0;
        for (int64_t i = 0; i < tensors; i++) {
            const int64_t q = i * k + j;
            const double p = raw[q] * scale[q] - (origin ? origin[q] : 0.0);
            if (projection) projection[q] = p;
            if (out) out[q] = (float)p;
            sum += weights[q] * p;
        }
        if (total) total[j] = sum;
        if (out) out[tensors * k + j] = (float)sum;
    }
}

/* The three sketches share tensors out over `threads` (tensors_team); each tensor's sums are its own, so the
 * result does not depend on the thread count. */

/* Dense sketch: raw[i, j] = g_i[j, :] . theta_i in double (g_i row-major (k, n_i)), then finish_sketch.
 * raw is scratch of (tensors, k) doubles. */
void dense_sketch_f32(int64_t tensors, const float *const *theta, const float *const *g, const int64_t *numel,
                      int64_t k, const double *scale, const double *origin, const double *weights, double *raw,
                      double *projection, double *total, float *out, int threads) {
    const int team = tensors_team(tensors, numel, threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team) if (team > 1)
    for (int64_t i = 0; i < tensors; i++) {
        const float *x = theta[i];
        const int64_t n = numel[i];
        double *row = raw + i * k;
        for (int64_t j = 0; j < k; j++) row[j] = 0.0;
        for (int64_t e0 = 0; e0 < n; e0 += CHUNK) {
            const int64_t e1 = e0 + CHUNK < n ? e0 + CHUNK : n;
            for (int64_t j = 0; j < k; j++) {
                const float *d = g[i] + j * n;
                double acc = 0.0;
#pragma omp simd reduction(+ : acc)
                for (int64_t e = e0; e < e1; e++) acc += (double)d[e] * (double)x[e];
                row[j] += acc;
            }
        }
    }
    finish_sketch(tensors, k, raw, scale, origin, weights, projection, total, out);
}

/* Sign sketch: raw[i, j] = sum_e s_ij[e] theta_i[e] in double, s_ij[e] = +1 where bit j % 8 of
 * bits_i[(j / 8) * n_i + e] is set, else -1 (ceil(k / 8) rows of n_i bytes), then finish_sketch.
 * Elements are first summed by byte value (256 bins, four interleaved copies against store-to-load stalls);
 * each direction then signs the 256 bin sums: sum_e s_ij[e] x[e] = sum_v (bit j of v ? 1 : -1) bin[v]. */
void sign_sketch_f32(int64_t tensors, const float *const *theta, const uint8_t *const *bits, const int64_t *numel,
                     int64_t k, const double *scale, const double *origin, const double *weights, double *raw,
                     double *projection, double *total, float *out, int threads) {
    const int team = tensors_team(tensors, numel, threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team) if (team > 1)
    for (int64_t i = 0; i < tensors; i++) {
        double bins[4][256];
        const float *x = theta[i];
        const int64_t n = numel[i];
        for (int64_t r = 0; r * 8 < k; r++) {
            const uint8_t *b = bits[i] + r * n;
            memset(bins, 0, sizeof bins);
            int64_t e = 0;
            for (; e + 4 <= n; e += 4) {
                bins[0][b[e]] += (double)x[e];
                bins[1][b[e + 1]] += (double)x[e + 1];
                bins[2][b[e + 2]] += (double)x[e + 2];
                bins[3][b[e + 3]] += (double)x[e + 3];
            }
            for (; e < n; e++) bins[0][b[e]] += (double)x[e];
            for (int v = 0; v < 256; v++) bins[0][v] += bins[1][v] + bins[2][v] + bins[3][v];
            for (int64_t j = r * 8; j < k && j < r * 8 + 8; j++) {
                const int shift = (int)(j % 8);
                double acc = 0.0;
#pragma omp simd reduction(+ : acc)
                for (int v = 0; v < 256; v++) acc += ((v >> shift) & 1) ? bins[0][v] : -bins[0][v];
                raw[i * k + j] = acc;
            }
        }
    }
    finish_sketch(tensors, k, raw, scale, origin, weights, projection, total, out);
}

/* Hashed sketch: element e of tensor i adds +theta_i[e] to direction bins_i[e] (bins < k) or -theta_i[e] to
 * direction bins_i[e] - k, in double, then finish_sketch. raw is scratch of (tensors, 2 k) doubles. */
void hashed_sketch_f32(int64_t tensors, const float *const *theta, const int32_t *const *bins,
                       const int64_t *numel, int64_t k, const double *scale, const double *origin,
                       const double *weights, double *raw, double *projection, double *total, float *out,
                       int threads) {
    const int team = tensors_team(tensors, numel, threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(team) if (team > 1)
    for (int64_t i = 0; i < tensors; i++) {
        double *sums = raw + i * 2 * k;
        for (int64_t b = 0; b < 2 * k; b++) sums[b] = 0.0;
        const float *x = theta[i];
        const int32_t *bin = bins[i];
        for (int64_t e = 0; e < numel[i]; e++) sums[bin[e]] += (double)x[e];
        for (int64_t j = 0; j < k; j++) sums[j] -= sums[j + k];
    }
    for (int64_t i = 0; i < tensors; i++)  /* compact the signed sums to (tensors, k) in place */
        for (int64_t j = 0; j < k; j++) raw[i * k + j] = raw[i * 2 * k + j];
    finish_sketch(tensors, k, raw, scale, origin, weights, projection, total, out);
}

/* out = [zero fraction (layers), dead fraction (layers), mean (layers), std (layers)] from each layer's
 * activation_stats_f32 result stats[l] = [entries outside the flat region, active units, sum, m2]. */
void activation_finish_f32(int64_t layers, const float *const *stats, const int64_t *entries, const int64_t *units,
                           float *out) {
    for (int64_t l = 0; l < layers; l++) {
        const float *s = stats[l];
        const double n = (double)entries[l], u = (double)units[l];
        out[l] = (float)((n - (double)s[0]) / n);
        out[layers + l] = (float)((u - (double)s[1]) / u);
        out[2 * layers + l] = (float)((double)s[2] / n);
        out[3 * layers + l] = (float)__builtin_sqrt((double)s[3] / n);
    }
}

/* out = [loss, top-1 accuracy]: loss copied, accuracy the fraction of the rows of output (rows, classes) whose
 * first maximal entry is at target[row]. */
void loss_accuracy_f32(const float *loss, const float *output, int64_t rows, int64_t classes, const int64_t *target,
                       float *out) {
    int64_t correct = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *o = output + r * classes;
        int64_t best = 0;
        for (int64_t c = 1; c < classes; c++)
            if (o[c] > o[best]) best = c;
        correct += best == target[r];
    }
    out[0] = *loss;
    out[1] = rows ? (float)((double)correct / (double)rows) : __builtin_nanf("");
}
