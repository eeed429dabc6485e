"""Sessions: files persist between executions of the same session, and nowhere else."""

from deepexec_sdk import DeepExecClient

with DeepExecClient() as client:
    with client.create_session() as session:
        session.execute_code_and_wait("open('notes.txt', 'w').write('kept')", "python")
        again = session.execute_code_and_wait("print(open('notes.txt').read())", "python")
        print(f"Inside the session: {again.output.strip()}")
    outside = client.execute_code_and_wait(
        "import os; print(os.path.exists('notes.txt'))", "python"
    )
    print(f"Outside the session the file exists: {outside.output.strip()}")
