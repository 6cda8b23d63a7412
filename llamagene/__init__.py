"""llamagene: teach LLaMA-family language models to read DNA and protein as well as English.

The pipeline's stages live in :mod:`llamagene.stages`; ``llamagene --help`` lists the commands.
"""

__version__ = "0.1.0"
