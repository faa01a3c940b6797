"""Join videos end to end into one MJPG .avi (the demo's 'long video from the wild')."""
import sys

import cv2

out, *inputs = sys.argv[1:]
writer = None
for path in inputs:
    capture = cv2.VideoCapture(path)
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if writer is None:
            height, width = frame.shape[:2]
            writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, height))
        writer.write(frame)
    capture.release()
writer.release()
print(f"wrote {out}")
