"""Data: data set registration and generators (:mod:`.datasets`), dataset mappers, loaders.

Importing it registers nothing; ``import clusterformer.d2`` registers the data sets.
"""
