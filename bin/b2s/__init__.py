"""nf-bulk2single: the science behind the pipeline's stages (one module per concern).

Scripts in ``bin/`` stay thin: they parse arguments and call functions from this package.
Nextflow puts ``bin/`` on the task PATH, and each script's own directory is on ``sys.path``,
so ``import b2s`` works in every task without installing anything.
"""

__version__ = "0.1.0"

# Before anything imports numba (scanpy does): one numba cache per work directory, not per task.
from b2s.cache import share_numba_cache as _share_numba_cache  # noqa: E402

_share_numba_cache()
