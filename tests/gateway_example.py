"""The minimal service of the ``llmpulse.gateway`` docstring, verbatim (checked by mypy)."""

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
