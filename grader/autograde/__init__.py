"""The instructor's side: nbgrader's flow (`pipeline`), parallel grading with limits
(`parallel`, `execute`) and the class reports (`reports`)."""
