"""fercli: a resumable command-line pipeline for video facial expression recognition."""
from .core import tfenv

__version__ = "0.1.0"

# TensorFlow's start-up chatter (absl, CUDA, oneDNN lines) would bury fercli's own
# one-line messages; errors still show. `fer --verbose` or FERCLI_VERBOSE=1 shows it all.
tfenv.quiet()
