"""The library behind the build_sft stage: the pieces that turn benchmark tasks into instruction
rows (finding train/dev sequences that leak test sequences, and the like), kept apart from the
stage itself so that each can be tested and benchmarked on its own.
"""
