// every way a constructor argument may be given: value, `&str` for `String`, `Out<T>`,
// `&Out<T>`, and for `Vec<T>` a `Vec<Out<T>>`, `&[Out<T>]` or `[Out<T>; N]` (fan-in)
use procession::prelude::*;

#[task]
fn fetch(source: String) -> Vec<u32> {
    vec![source.len() as u32]
}

#[task]
fn merge(parts: Vec<Vec<u32>>) -> Vec<u32> {
    parts.concat()
}

#[task]
fn total(xs: Vec<u32>, label: String) -> String {
    format!("{label}: {}", xs.iter().sum::<u32>())
}

#[process(mode = "concurrent")]
fn conversions(p: &mut Builder) {
    let eu = p.task(Fetch::new("eu"));
    let us = p.task(Fetch::new(String::from("us")));
    let parts: Vec<Out<Vec<u32>>> = vec![eu, us];
    let a = p.task(Merge::new(parts.clone()));
    let b = p.task(Merge::new(&parts[..]));
    let c = p.task(Merge::new([eu, us]));
    p.task(Total::new(a, "vec"));
    p.task(Total::new(&b, "ref"));
    p.task(Total::new(vec![1, 2, 3], String::from("value")));
    let _ = c;
}

fn main() {
    assert_eq!(Graph::of(Conversions {}).unwrap().len(), 8);
}
