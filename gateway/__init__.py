"""The in-app gateway SDK: provider failover, breaker view, prompt selection, events.

Everything an application service needs is importable from here (``__all__``);
the submodules stay importable too, for the less common names:

* failover: :class:`ProviderOrchestrator` routes an :class:`LLMCall` over
  :class:`Provider` s (each a :data:`ProviderCall` function returning a
  :class:`Completion`, raising :class:`ProviderError` on failure) and returns a
  :class:`Result`;
* the fleet's breakers: :class:`BreakerView` (shared via Redis, local fallback);
* prompt A/B: :class:`PromptSelector` gives a sticky :class:`PromptChoice`;
* events: :class:`EventEmitter` sends them to Kafka without blocking or losing any;
* configuration: :class:`GatewayConfig` (``GatewayConfig.from_env()`` reads the
  same ``LLMPULSE_*`` variables as the workers) and :func:`redis_client`;
* errors: one tree under :class:`GatewayError` (``llmpulse.gateway.exceptions``).

A minimal service (``tests/gateway_example.py`` holds this same code, so the
type checker and the tests see it)::

    import asyncio
    from decimal import Decimal

    from llmpulse.gateway import (
        BreakerView,
        Completion,
        EventEmitter,
        GatewayConfig,
        GatewayError,
        InvalidCompletion,
        LLMCall,
        PromptSelector,
        Provider,
        ProviderError,
        ProviderOrchestrator,
        redis_client,
    )


    async def call_acme(call: LLMCall, model: str) -> Completion:
        # One attempt at the provider: its API call goes here.
        if not call.payload:
            raise ProviderError("empty prompt", http_status=400)  # classified: no failover
        return Completion(content="...", input_tokens=12, output_tokens=3, cost_usd=Decimal("4E-4"))


    async def main() -> None:
        config = GatewayConfig.from_env()  # LLMPULSE_KAFKA_BOOTSTRAP, LLMPULSE_REDIS_URL, ...
        redis = redis_client(config)
        view = BreakerView(redis, config, ["acme"])
        prompts = PromptSelector(redis, config)
        async with EventEmitter(config) as emitter:
            await view.start()
            gateway = ProviderOrchestrator(
                [Provider("acme", "acme-large", call_acme)], view=view, emitter=emitter
            )
            try:
                choice = await prompts.select("support-answer", "user-42")
                result = await gateway.execute(
                    LLMCall(
                        org_id="org-1",
                        subject_id="user-42",
                        prompt_name=choice.prompt_name,
                        prompt_version=choice.version.version,
                        payload=choice.version.content,
                    )
                )
                print(result.completion.content)
            except InvalidCompletion as exc:  # paid for: the raw result is kept
                print(exc.provider, exc.problems, exc.raw)
            except GatewayError as exc:  # every other error of the gateway
                print(f"not served: {exc}")
            finally:
                await view.close()
        await redis.aclose()


    if __name__ == "__main__":
        asyncio.run(main())
"""

from llmpulse.gateway.backoff import Backoff
from llmpulse.gateway.breaker_view import BreakerView, ProviderHealth
from llmpulse.gateway.config import GatewayConfig, redis_client
from llmpulse.gateway.emitter import EventEmitter
from llmpulse.gateway.errors import ErrorDecision
from llmpulse.gateway.exceptions import (
    AllProvidersFailed,
    ConfigError,
    EmitterClosed,
    EmitterError,
    GatewayError,
    InvalidCompletion,
    InvalidRequest,
    NoProviderAvailable,
    PromptUnavailable,
    ProviderError,
    RequestFailed,
    RequestRejected,
    SpoolLocked,
)
from llmpulse.gateway.orchestrator import (
    AttemptRecord,
    Completion,
    LLMCall,
    Provider,
    ProviderCall,
    ProviderOrchestrator,
    Result,
)
from llmpulse.gateway.prompts import PromptChoice, PromptSelector, PromptVersionView

__all__ = [
    "AllProvidersFailed",
    "AttemptRecord",
    "Backoff",
    "BreakerView",
    "Completion",
    "ConfigError",
    "EmitterClosed",
    "EmitterError",
    "ErrorDecision",
    "EventEmitter",
    "GatewayConfig",
    "GatewayError",
    "InvalidCompletion",
    "InvalidRequest",
    "LLMCall",
    "NoProviderAvailable",
    "PromptChoice",
    "PromptSelector",
    "PromptUnavailable",
    "PromptVersionView",
    "Provider",
    "ProviderCall",
    "ProviderError",
    "ProviderHealth",
    "ProviderOrchestrator",
    "RequestFailed",
    "RequestRejected",
    "Result",
    "SpoolLocked",
    "redis_client",
]
