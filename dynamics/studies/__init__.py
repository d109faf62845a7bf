"""Studies: grids of captures that answer one question, each with its own ``python -m dynamics.studies.<name>``.

A study trains its runs here (the training side) and hands the finished runs to its analysis in
``analyses/``, which only reads them.
"""
