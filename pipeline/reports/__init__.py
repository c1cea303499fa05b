"""What a run tells people: report.md and the terminal table, ``compare`` and the offline HTML."""
