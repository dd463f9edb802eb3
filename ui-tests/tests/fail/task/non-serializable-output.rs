// a task's output is stored for the tasks that read it, so it must implement `Serialize` and `Deserialize`
use procession::prelude::*;

struct Connection {
    port: u16,
}

#[task]
fn connect(port: u16) -> Connection {
    Connection { port }
}

fn main() {}
