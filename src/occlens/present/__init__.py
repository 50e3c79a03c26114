"""What a person looks at: the matplotlib figure of a result and the HTML report of a run."""
