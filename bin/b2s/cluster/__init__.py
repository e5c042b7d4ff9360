"""FILTER: the kNN graph and Leiden clustering that keep the cells of coherent clusters."""
