"""Reading and writing the pipeline's files: bulk tables, the reference, weights, JSON/h5ad results."""
