"""universality (a study stage, `stage.py`): each unit's best match in every other variant."""
