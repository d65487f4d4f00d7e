"""Everything that touches llama.cpp.

`llama_cpp` is imported here, before anything can import numpy: with the CUDA build the
opposite order loads two copies of libstdc++ and model loading segfaults. Every engine
module is reached through this package, so this is the one place that fixes the order.
"""

import llama_cpp  # noqa: F401  (must precede numpy, see above)
