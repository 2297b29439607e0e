"""Writes tf_normalisation.json: the official caption clean-up applied by TensorFlow itself to every
character of the test captions (../shared) and of test_text.TRICKY, so that tests/test_text.py checks
`normalize_caption` against TensorFlow without importing it. The official chain,
tf.strings.regex_replace(x, "[[:punct:]]", "") then tf.strings.lower, acts on each character alone, so
the per-character table decides every caption. Run once with TensorFlow installed:

    python tests/data/make_tf_normalisation.py
"""
import json
import sys
from pathlib import Path

import tensorflow as tf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.test_text import TRICKY, real_captions  # noqa: E402

chars = sorted({ch for c in real_captions() + TRICKY for ch in c} | {chr(i) for i in range(128)})
out = tf.strings.lower(tf.strings.regex_replace(chars, "[[:punct:]]", "")).numpy()
table = {ch: t.decode("utf-8") for ch, t in zip(chars, out)}
(HERE / "tf_normalisation.json").write_text(json.dumps(table, ensure_ascii=False, indent=0, sort_keys=True) + "\n",
                                            encoding="utf-8")
print(f"{len(table)} characters")
