"""One call's conversation: listening, replying, and the states that govern both."""
