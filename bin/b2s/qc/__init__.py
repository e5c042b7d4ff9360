"""Quality of the generated cells: markers, kNN typing, embedding, bulk and composition checks."""
