"""Streaming: program output as it is produced, and generated text piece by piece."""

import asyncio

from deepexec_sdk import DeepExecAsyncClient
from deepexec_sdk.exceptions import MCPProviderNotConfiguredError


async def main() -> None:
    async with DeepExecAsyncClient() as client:
        stream = await client.execute_code_stream(
            "import time\nfor i in range(3):\n    print(f'tick {i}', flush=True)\n"
            "    time.sleep(0.3)",
            "python",
        )
        async for chunk in stream:
            print(f"[{chunk.stream}] {chunk.data}", end="")
        assert stream.result is not None
        print(f"exit code {stream.result.exit_code} in {stream.result.execution_time} ms")

        try:
            text = await client.generate_text_stream("Count to five", max_tokens=50)
            async for piece in text:
                print(piece, end="", flush=True)
            print(f"\nusage: {text.usage}")
        except MCPProviderNotConfiguredError as error:
            print(f"Streaming text needs a provider: {error.message}")


asyncio.run(main())
