"""The spec README's text generation example (asynchronous)."""

import asyncio

from deepexec_sdk import DeepExecAsyncClient
from deepexec_sdk.exceptions import MCPProviderNotConfiguredError


async def text_generation_example() -> None:
    async with DeepExecAsyncClient() as client:
        # Submit a text generation job
        job = await client.generate_text_job(
            prompt="Write a short poem about artificial intelligence",
            model="deepseek-v3",
            max_tokens=200,
            temperature=0.8,
        )

        print(f"Text generation job submitted with ID: {job.job_id}")

        # Get the result when ready
        try:
            result = await client.get_text_generation_result(job.job_id)
        except MCPProviderNotConfiguredError as error:
            print(f"Text generation is not configured on this server: {error.message}")
            return

        print(f"Generated text: {result.text}")
        print(f"Model: {result.model}")
        print(f"Generation time: {result.generation_time} ms")
        print(f"Token usage: {result.usage}")

        # Or use the convenience method that handles polling
        result = await client.generate_text_and_wait(
            prompt="Explain how neural networks work", model="deepseek-v3"
        )
        print(f"Generated text: {result.text}")


asyncio.run(text_generation_example())
