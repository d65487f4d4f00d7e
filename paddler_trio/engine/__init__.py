"""Everything that touches llama.cpp.

`llama_cpp` is imported here, before anything can import numpy: with the CUDA build the
opposite order loads two copies of libstdc++ and model loading segfaults. Every engine
module is reached through this package, so this is the one place that fixes the order.

It is also where libgomp (llama.cpp's CPU threads are OpenMP threads) reads its settings,
once, as it loads. By default an OpenMP thread that runs out of work spins for 300,000
rounds (several milliseconds here) before it sleeps. After every engine step that spin
takes a core away from what runs between steps: the agent handing tokens on, the balancer,
the clients. On two cores it made a first token 3-5 ms later. `ENGINE_SPIN_COUNT` keeps the
spin to about the gap between two steps, so the engine's own throughput is unchanged
(`benchmarks/results/`). A `GOMP_SPINCOUNT` or `OMP_WAIT_POLICY` set by the user wins. The
setting is taken out of the environment again once read, so that processes started from
here (llama-server in the benchmarks) keep their own defaults.
"""

import os

ENGINE_SPIN_COUNT = "30000"

_user_chose = "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ
if not _user_chose:
    os.environ["GOMP_SPINCOUNT"] = ENGINE_SPIN_COUNT

import llama_cpp  # noqa: E402, F401  (after GOMP_SPINCOUNT is set and before numpy, see above; libgomp reads the environment now)

if not _user_chose:
    del os.environ["GOMP_SPINCOUNT"]
