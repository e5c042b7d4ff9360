"""Other engines behind the pipeline's interface (omicverse)."""
