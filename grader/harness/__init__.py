"""What runs in the student's notebook: the check harness (`checking`) and the guard against
shortcuts (`guard`)."""
