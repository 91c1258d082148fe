"""The graph paradigm (torch_geometric). Importing torch_geometric compiles helpers with ``torch.jit.script``, which
torch 2.14 deprecates: every graph run printed that FutureWarning, which no user of tiedlab can act on. It is
filtered here, by its message, for that import alone."""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import torch_geometric  # noqa: F401 - imported once here, under the filter
