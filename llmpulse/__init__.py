"""llmpulse: the resilience and cost backbone of an LLM platform.

Import what you need from the subpackages; this module only carries the
version. ``pip install llmpulse`` gives an application service the SDK and the
event contracts; ``pip install 'llmpulse[worker]'`` adds the workers, reports,
local stack and demo:

* ``llmpulse.gateway``: the in-app SDK (failover, breaker view, prompt
  selection, lossless event emission);
* ``llmpulse.schemas``: the event contracts (models, topic registry, Redis
  serving contract, JSON Schemas, examples);
* ``llmpulse.core``: pure logic shared by the SDK and the workers (breaker
  state machine, rollups, registry fold, A/B statistics, usage planning);
* ``llmpulse.processors``: the stream edge and one subpackage per flow
  (breaker, prompts, billing, sinks) [worker];
* ``llmpulse.cli``: the ``llmpulse`` command [worker];
* ``llmpulse.devstack`` and ``llmpulse.simulator``: local stack, demo and fleet
  simulator, never imported by the workers [worker].
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llmpulse")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
