"""Using finalized runs: their folders, prediction, export, live."""
