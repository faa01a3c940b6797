"""Pure computer-vision cores: face detection, tracking and lossless clip I/O."""
