//! What a convergence check found (e2e and reliability judge a node by it).

/// Empty when the node runs exactly what is desired and nothing leaked.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    /// Desired things missing or running wrong; status not true.
    pub wrong: Vec<String>,
    /// Programs, links, pins, hooks, filters or state files nothing desired accounts for.
    pub leaks: Vec<String>,
}

impl Findings {
    pub fn is_clean(&self) -> bool {
        self.wrong.is_empty() && self.leaks.is_empty()
    }

    pub fn absorb(&mut self, other: Findings) {
        self.wrong.extend(other.wrong);
        self.leaks.extend(other.leaks);
    }
}
