"""What runs on the head node: parameter checks, preflight, outdir lock, staging, task messages."""
