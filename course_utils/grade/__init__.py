"""Grade students' notebooks against the solutions: a gradebook CSV and a feedback file each.

    python -m course_utils.grade SUBMISSION... [--assignment NN] [--out DIR] [--jobs N]
                                 [--solutions DIR] [--timeout S] [--cell-timeout S] [--no-sandbox]

SUBMISSION is a notebook or a folder of notebooks. Name files ``STUDENT__anything.ipynb`` (two
underscores), or put each student's notebook in a folder named after the student.

How a submission is graded (CONTRIBUTING.md, "Exercises" > "How the grader uses them"):

1. The reference: the assignment's solution notebook runs once per grading run; its hidden tests
   (``cu.probe``) record the reference values, which the grader keeps in memory only.
2. Each submission: the SOLUTION notebook runs again, with the student's exercise cells (found by
   cell metadata, id or ``def`` line) in place of the solutions, and the hidden tests right after
   each check cell. Nothing else of the student's notebook runs, so what their other cells
   redefine or patch cannot reach the checks; what an exercise cell patches in ``builtins`` or
   ``course_utils`` is undone after it. A call to a callable the exercise forbids
   (``metadata.course.forbid``) made by the student's code gives ``uses-reference``.
3. Every kernel runs in reduced mode in a bubblewrap sandbox (``sandbox.py``): no network, no view of
   the checkout, the solutions, the instructor's home, the grader or other submissions, limits
   on memory, processes, CPU, file size and disk, and nothing it starts outlives it.
4. The values the student's code recorded are compared with the reference
   (``checks.probe_matches``); an exercise scores ``points * passed / total`` hidden tests.

Modules: ``solutions`` (reading the answer key), ``submissions`` (finding and reading files),
``planning`` (what a kernel runs), ``sandbox``, ``worker`` (the process that drives one kernel,
through ``course_utils.kernels``), ``process`` (starting, timing and killing workers), ``monitor``
(runs inside the kernel), ``scoring``, ``feedback``, ``cli``.
"""
from .cli import grade, main
from .planning import Step, find_exercise, plan
from .process import Run, Settings, kernel_env, run_notebook
from .sandbox import Limits
from .scoring import COLUMNS, STATUSES, TOTAL, Reference, Row, reference_from, score
from .solutions import Assignment, Catalog, Cell, Exercise, HiddenBlock, default_solutions_dir, load_assignment
from .submissions import MAX_FILE_BYTES, Submission, detect_assignment, expand, read_submission, student_name

__all__ = ["grade", "main", "Step", "find_exercise", "plan", "Run", "Settings", "kernel_env", "run_notebook",
           "Limits", "COLUMNS", "STATUSES", "TOTAL", "Reference", "Row", "reference_from", "score",
           "Assignment", "Catalog", "Cell", "Exercise", "HiddenBlock", "default_solutions_dir", "load_assignment",
           "MAX_FILE_BYTES", "Submission", "detect_assignment", "expand", "read_submission", "student_name"]
