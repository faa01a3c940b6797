"""Keep opencv-contrib-python the only cv2 distribution in the environment.

Other wheels (opencv-python, opencv-python-headless, ...) install the same `cv2`
package; whichever was installed last wins and the contrib modules (legacy
trackers) silently vanish. Remove them and reinstall contrib when that happens.
"""
import subprocess
import sys
from importlib import metadata

OTHERS = ["opencv-python", "opencv-python-headless", "opencv-contrib-python-headless"]

found = []
for name in OTHERS:
    try:
        metadata.version(name)
        found.append(name)
    except metadata.PackageNotFoundError:
        pass
if found:
    print(f"removing conflicting cv2 distributions: {', '.join(found)}")
    subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "-y", *found])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet",
                           "--force-reinstall", "--no-deps", "opencv-contrib-python"])
import cv2  # noqa: E402

assert hasattr(cv2, "legacy"), "cv2 lacks the contrib modules (cv2.legacy)"
print(f"cv2 {cv2.__version__} from opencv-contrib-python: ok")
