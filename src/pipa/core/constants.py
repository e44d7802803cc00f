"""Constants shared by every layer (one definition each)."""

IGNORE_INDEX = 255  # label value that no loss, metric, sampler or memory ever treats as a class
