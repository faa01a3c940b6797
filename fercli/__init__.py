"""fercli: a resumable command-line pipeline for video facial expression recognition."""
import os

__version__ = "0.1.0"

# TensorFlow's C++ start-up chatter (INFO and WARNING lines) would bury fercli's own
# one-line messages; errors still show. Set TF_CPP_MIN_LOG_LEVEL=0 to see everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
