"""Code-generation conventions the SymPy worker and the generator's kernel checks share."""

#: How Python code applies a ``math`` function (one number at a time) to arrays.
ARRAY_CALL = "numpy.vectorize({}, otypes=[float])"
