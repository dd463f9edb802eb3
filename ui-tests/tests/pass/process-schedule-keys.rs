// a schedule with seconds, a named time zone and an overlap policy; the definition's
// default schedule carries all three
use procession::prelude::*;
use procession::{Definition, Overlap, Schedule};

#[task]
fn poll() {}

#[process(schedule = "30 */5 * * * *", tz = "America/New_York", overlap = "queue_one")]
fn poller(p: &mut Builder) {
    p.task(Poll::new());
}

#[process(schedule = "0 2 * * *", overlap = "allow")]
fn nightly(p: &mut Builder) {
    p.task(Poll::new());
}

fn main() {
    assert_eq!(<Poller as Process>::META.tz, Some("America/New_York"));
    assert_eq!(<Poller as Process>::META.overlap, Overlap::QueueOne);
    let d = Definition::new("poller", Poller {}).unwrap();
    let _ = d;
    let expected = Schedule::cron("30 */5 * * * *")
        .unwrap()
        .tz("America/New_York")
        .unwrap()
        .overlap(Overlap::QueueOne);
    assert_eq!(
        Schedule::from_meta("30 */5 * * * *", Some("America/New_York"), Overlap::QueueOne)
            .unwrap(),
        expected
    );
    assert_eq!(<Nightly as Process>::META.overlap, Overlap::Allow);
}
