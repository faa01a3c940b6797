"""Regenerate the README's config reference block from fercli.core.config (make docs)."""
import re
from pathlib import Path

from fercli.core.config import reference_markdown

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
block = f"<!-- config-reference:start -->\n{reference_markdown()}\n<!-- config-reference:end -->"
text = re.sub(r"<!-- config-reference:start -->\n.*?<!-- config-reference:end -->",
              lambda _: block, text, flags=re.S)
readme.write_text(text)
print(f"updated {readme}")
