"""The spec README's synchronous Quick Start."""

from deepexec_sdk import DeepExecClient

with DeepExecClient() as client:
    # Execute code
    try:
        result = client.execute_code_and_wait("print('Hello, World!')", "python")
        print(f"Output: {result.output}")
        print(f"Exit code: {result.exit_code}")
        print(f"Execution time: {result.execution_time} ms")
    except Exception as error:
        print(f"Execution failed: {error}")

    # Generate text
    try:
        result = client.generate_text_and_wait(
            "Explain quantum computing in simple terms", model="deepseek-v3", max_tokens=500
        )
        print(f"Generated text: {result.text}")
        print(f"Model: {result.model}")
        print(f"Generation time: {result.generation_time} ms")
    except Exception as error:
        print(f"Text generation failed: {error}")
