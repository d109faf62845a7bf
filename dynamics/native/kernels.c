/* Fused CPU kernels for the recorder's per-step statistics (float32 data, C11).
 *
 * Each function does in one pass what the torch implementation does in several small operations; on a CPU
 * the recorder's cost is dominated by the number of operations per step, not by arithmetic. Loaded with
 * ctypes by dynamics/native/__init__.py, which also says how results map onto the recorded variables.
 *
 * Accuracy: activation moments add float32 partial sums of at most CHUNK consecutive entries of a row
 * into double accumulators, around a shift (the tensor's first entry) so that the variance does not cancel;
 * parameter norms, distances and sketch projections accumulate every product in double.
 */
#include <stdint.h>
#include <string.h>

#define CHUNK 256

#define RULE_LOW 1
#define RULE_HIGH 2

/* One pass over a (rows, cols) activation: flat-region counts and per-unit activity and/or moments.
 * An entry is outside the flat region when (no low or v > low) and (no high or v < high). */
static inline __attribute__((always_inline)) void activation_pass(
    const float *y, int64_t rows, int64_t cols, int rule, float low, float high, int counts, int moments,
    float *active, double *out) {
    const float shift = moments ? y[0] : 0.0f;
    double sum = 0.0, sum_sq = 0.0;
    int64_t inside_total = 0;
    if (counts) memset(active, 0, (size_t)cols * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        const float *row = y + r * cols;
        for (int64_t c0 = 0; c0 < cols; c0 += CHUNK) {
            const int64_t c1 = c0 + CHUNK < cols ? c0 + CHUNK : cols;
            float s = 0.0f, ss = 0.0f;
            int32_t n = 0;
#pragma omp simd reduction(+ : s, ss, n)
            for (int64_t c = c0; c < c1; c++) {
                const float v = row[c];
                if (moments) {
                    const float d = v - shift;
                    s += d;
                    ss += d * d;
                }
                if (counts) {
                    const int in = (!(rule & RULE_LOW) || v > low) & (!(rule & RULE_HIGH) || v < high);
                    n += in;
                    active[c] = in ? 1.0f : active[c];
                }
            }
            sum += s;
            sum_sq += ss;
            inside_total += n;
        }
    }
    if (counts) {
        int64_t units = 0;
        for (int64_t c = 0; c < cols; c++) units += active[c] > 0.0f;
        out[0] = (double)inside_total;
        out[1] = (double)units;
    }
    if (moments) {
        const double entries = (double)(rows * cols);
        out[2] = (double)shift * entries + sum;
        out[3] = sum_sq - sum * sum / entries;
    }
}

#define PASS(RULE, COUNTS, MOMENTS) activation_pass(y, rows, cols, RULE, low, high, COUNTS, MOMENTS, active, result)
#define RULES(COUNTS, MOMENTS)                                                                                     \
    if (rule == RULE_LOW) PASS(RULE_LOW, COUNTS, MOMENTS);                                                        \
    else if (rule == RULE_HIGH) PASS(RULE_HIGH, COUNTS, MOMENTS);                                                 \
    else PASS(RULE_LOW | RULE_HIGH, COUNTS, MOMENTS)

/* out = [entries outside the flat region, active units, sum, sum of squared deviations from the mean];
 * active[c] = 1 where some row is outside the flat region at column c, else 0. rule has RULE_LOW and/or
 * RULE_HIGH set; counts/moments select which halves are computed (the other half of out, and active, are
 * left alone). */
void activation_stats_f32(const float *y, int64_t rows, int64_t cols, int rule, float low, float high,
                          int counts, int moments, float *active, float *out) {
    double result[4] = {0.0, 0.0, 0.0, 0.0};
    if (rows * cols == 0) return;
    if (counts && moments) {
        RULES(1, 1);
    } else if (counts) {
        RULES(1, 0);
    } else if (moments) {
        PASS(0, 0, 1);
    }
    for (int q = counts ? 0 : 2; q < (moments ? 4 : 2); q++) out[q] = (float)result[q];
}

/* out[i] = |a_i| (b == NULL) or |a_i - b_i|, the L2 norm accumulated in double, for each tensor i. */
void norms_f32(int64_t tensors, const float *const *a, const float *const *b, const int64_t *numel, float *out) {
    for (int64_t i = 0; i < tensors; i++) {
        const float *x = a[i];
        const int64_t n = numel[i];
        double acc = 0.0;
        if (b) {
            const float *z = b[i];
#pragma omp simd reduction(+ : acc)
            for (int64_t e = 0; e < n; e++) {
                const double d = (double)x[e] - (double)z[e];
                acc += d * d;
            }
        } else {
#pragma omp simd reduction(+ : acc)
            for (int64_t e = 0; e < n; e++) acc += (double)x[e] * (double)x[e];
        }
        out[i] = (float)__builtin_sqrt(acc);
    }
}

/* dst_i[e] = src_i[e] for each tensor i. */
void copy_tensors_f32(int64_t tensors, float *const *dst, const float *const *src, const int64_t *numel) {
    for (int64_t i = 0; i < tensors; i++) memcpy(dst[i], src[i], (size_t)numel[i] * sizeof(float));
}

/* The sketch from raw per-direction sums: projection = raw * scale - origin (origin may be NULL) and
 * total[j] = sum_i weights[i, j] * projection[i, j], in double. Matrices are (tensors, k), row-major. */
static void finish_sketch(int64_t tensors, int64_t k, const double *raw, const double *scale, const double *origin,
                          const double *weights, double *projection, double *total) {
    for (int64_t j = 0; j < k; j++) {
        double sum = 0.0;
        for (int64_t i = 0; i < tensors; i++) {
            const int64_t q = i * k + j;
            const double p = raw[q] * scale[q] - (origin ? origin[q] : 0.0);
            projection[q] = p;
            sum += weights[q] * p;
        }
        total[j] = sum;
    }
}

/* Dense sketch: raw[i, j] = g_i[j, :] . theta_i in double (g_i row-major (k, n_i)), then finish_sketch.
 * raw is scratch of (tensors, k) doubles. */
void dense_sketch_f32(int64_t tensors, const float *const *theta, const float *const *g, const int64_t *numel,
                      int64_t k, const double *scale, const double *origin, const double *weights, double *raw,
                      double *projection, double *total) {
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
    finish_sketch(tensors, k, raw, scale, origin, weights, projection, total);
}

/* Hashed sketch: element e of tensor i adds +theta_i[e] to direction bins_i[e] (bins < k) or -theta_i[e] to
 * direction bins_i[e] - k, in double, then finish_sketch. raw is scratch of (tensors, 2 k) doubles. */
void hashed_sketch_f32(int64_t tensors, const float *const *theta, const int32_t *const *bins,
                       const int64_t *numel, int64_t k, const double *scale, const double *origin,
                       const double *weights, double *raw, double *projection, double *total) {
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
    finish_sketch(tensors, k, raw, scale, origin, weights, projection, total);
}
