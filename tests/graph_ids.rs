//! Node ids and fingerprints are part of what a store keeps: a stored run resumes only
//! under a graph with the same fingerprint, and its task records are found by node id.
//! These tests pin both for graphs that exercise every way an id is made (repeats, blocks,
//! `each`, `transform`, sub-processes, ids given by the user, names with `#`, `/` and `[`),
//! so that a faster graph build cannot change them.

// Task inputs are owned values (they are stored between tasks).
#![allow(clippy::needless_pass_by_value)]

use procession::prelude::*;

#[task]
fn noop() {}

#[task]
fn num(x: u32) -> u32 {
    x
}

#[task]
fn add(a: u32, b: u32) -> u32 {
    a + b
}

/// A name that looks like a derived id with a suffix.
#[task(name = "noop#1")]
fn hashed() {}

/// A name with a segment separator.
#[task(name = "a/b")]
fn slashed() {}

/// A task named like a block.
#[task(name = "each")]
fn each_named() {}

#[process]
fn inner(p: &mut Builder, x: u32) {
    let a = p.task(Num::new(x));
    p.task(Add::new(a, a).id("sum"));
    p.task(Noop::new());
}

/// A sub-process whose segment looks like the prefix of an `each` item.
#[process(name = "each[0]")]
fn bracketed(p: &mut Builder) {
    p.task(Noop::new());
    p.task(Noop::new());
}

#[process]
fn mixed(p: &mut Builder) {
    p.task(Noop::new());
    p.task(Noop::new());
    // Taken before the derived ids reach it: they skip it.
    p.task(Noop::new().id("noop#3"));
    p.task(Noop::new());
    p.task(Noop::new());
    p.task(Noop::new());
    // The base itself is taken by the derived `noop#1`, and `noop#1#1` is free.
    p.task(Hashed::new());
    p.task(Hashed::new());
    p.task(Noop::new().id("noop#1#3"));
    p.task(Hashed::new());
    p.task(Hashed::new());
    p.task(Slashed::new());
    p.task(Slashed::new());
    p.task(EachNamed::new());
    let xs = p.each(0..3u32, |p, i| p.task(Num::new(i)));
    p.each(0..2u32, |p, _| {
        p.task(Noop::new());
        p.task(Noop::new());
    });
    p.sub_process(Bracketed {});
    let s = p.sequential(|p| {
        let a = p.task(Num::new(1));
        p.task(Noop::new());
        p.task(Add::new(a, xs[2]))
    });
    p.sequential(|p| p.task(Noop::new()));
    p.concurrent(|p| {
        p.task(Noop::new());
        p.concurrent(|p| p.task(Add::new(s, s)));
    });
    p.transform(
        5u32,
        |x| x + 1,
        |p, x| {
            p.task(Num::new(x));
        },
    );
    p.sub_process(Inner { x: 1 });
    p.sub_process(Inner { x: 2 });
    p.after(&[s.node()], |p| p.task(Noop::new().id("last")));
    p.task(Noop::new().id("each#9"));
    p.each(0..1u32, |p, _| p.task(Noop::new()));
}

#[test]
fn mixed_ids_are_pinned() {
    let g = Graph::of(Mixed {}).unwrap();
    assert_eq!(
        g.node_ids(),
        vec![
            "noop",
            "noop#1",
            "noop#3",
            "noop#2",
            "noop#4",
            "noop#5",
            "noop#1#1",
            "noop#1#2",
            "noop#1#3",
            "noop#1#4",
            "noop#1#5",
            "a/b",
            "a/b#1",
            "each",
            "each#1[0]/num",
            "each#1[1]/num",
            "each#1[2]/num",
            "each#2[0]/noop",
            "each#2[0]/noop#1",
            "each#2[1]/noop",
            "each#2[1]/noop#1",
            "each[0]/noop",
            "each[0]/noop#1",
            "sequential/num",
            "sequential/noop",
            "sequential/add",
            "sequential#1/noop",
            "concurrent/noop",
            "concurrent/concurrent/add",
            "transform/num",
            "inner/num",
            "inner/sum",
            "inner/noop",
            "inner#1/num",
            "inner#1/sum",
            "inner#1/noop",
            "last",
            "each#9",
            "each#3[0]/noop",
        ]
    );
    assert_eq!(
        g.dependencies("sequential/add").unwrap(),
        vec!["each#1[2]/num", "sequential/num", "sequential/noop"]
    );
    assert_eq!(g.dependencies("last").unwrap(), vec!["sequential/add"]);
    assert_eq!(g.fingerprint(), 0x10e8_09dc_84a0_adad);
}

#[process]
fn wide_pin(p: &mut Builder, n: u32) {
    p.each(0..n, |p, i| p.task(Num::new(i)));
}

#[process]
fn repeats(p: &mut Builder, n: u32) {
    for i in 0..n {
        p.task(Num::new(i));
    }
}

#[process]
fn chain_pin(p: &mut Builder, n: u32) {
    let mut x = p.task(Num::new(0));
    p.each(1..n, |p, _| x = p.task(Add::new(x, x)));
}

/// An `each` item and a sub-process with the same prefix: their ids still differ.
#[process]
fn prefix_clash(p: &mut Builder) {
    p.each(0..2u32, |p, _| p.task(Noop::new()));
    p.sub_process(Bracketed {});
    p.task(Hashed::new());
    p.task(Noop::new());
    p.task(Noop::new());
    p.task(Hashed::new());
}

/// The fingerprints of `w`, `r` and `c` were computed by a separate implementation of
/// the definition (in the runtime's `graph/fingerprint.rs`), which also gave the values
/// the earlier FNV-1a definition pinned here.
#[test]
fn large_graph_ids_and_fingerprints_are_pinned() {
    let w = Graph::of(WidePin { n: 1000 }).unwrap();
    let r = Graph::of(Repeats { n: 1000 }).unwrap();
    let c = Graph::of(ChainPin { n: 1000 }).unwrap();
    let x = Graph::of(PrefixClash {}).unwrap();
    assert_eq!(w.node_ids()[999], "each[999]/num");
    assert_eq!(w.fingerprint(), 0x125d_3c4d_8866_f077);
    assert_eq!(r.node_ids()[0], "num");
    assert_eq!(r.node_ids()[999], "num#999");
    assert_eq!(r.fingerprint(), 0x8d37_d90f_6bae_2f42);
    assert_eq!(c.node_ids()[999], "each[998]/add");
    assert_eq!(
        c.dependencies("each[998]/add").unwrap(),
        vec!["each[997]/add"]
    );
    assert_eq!(c.fingerprint(), 0xe966_be95_232f_3524);
    assert_eq!(
        x.node_ids(),
        vec![
            "each[0]/noop",
            "each[1]/noop",
            "each[0]/noop#1",
            "each[0]/noop#2",
            "noop#1",
            "noop",
            "noop#2",
            "noop#1#1",
        ]
    );
    assert_eq!(x.fingerprint(), 0x0623_c478_e633_de5b);
}

#[process]
fn taken_by_derived(p: &mut Builder) {
    p.task(Noop::new());
    p.task(Noop::new());
    p.task(Noop::new().id("noop#1"));
}

#[process]
fn taken_by_block(p: &mut Builder) {
    p.each(0..1u32, |p, _| p.task(Noop::new()));
    p.task(Noop::new().id("each"));
}

#[process]
fn taken_in_sub_process(p: &mut Builder) {
    p.sub_process(Inner { x: 1 });
    p.sub_process(Inner { x: 2 });
    p.task(Num::new(3).id("inner#1"));
}

#[test]
fn an_id_taken_by_a_derived_one_is_refused() {
    let err = Graph::of(TakenByDerived {}).unwrap_err();
    assert_eq!(
        err,
        GraphError::DuplicateId {
            id: "noop#1".into(),
            first: "`noop` (task 2)".into(),
            second: "`noop` (task 3)".into(),
        }
    );
    let err = Graph::of(TakenByBlock {}).unwrap_err();
    assert_eq!(
        err,
        GraphError::DuplicateId {
            id: "each".into(),
            first: "a `each` block".into(),
            second: "`noop` (task 2)".into(),
        }
    );
    let err = Graph::of(TakenInSubProcess {}).unwrap_err();
    assert_eq!(
        err,
        GraphError::DuplicateId {
            id: "inner#1".into(),
            first: "a `inner#1` block".into(),
            second: "`num` (task 7)".into(),
        }
    );
}

/// A name with an item-like bracket.
#[task(name = "each[1]/noop")]
fn item_like() {}

#[process]
fn nested_items(p: &mut Builder) {
    p.task(Noop::new().id("x1"));
    p.each(0..2u32, |p, i| {
        p.task(Noop::new());
        // Ids given inside an item are the process's: `x1` is taken at the top level.
        p.task(Noop::new().id(format!("y{i}")));
        p.each(0..2u32, |p, _| {
            p.task(Noop::new());
            p.task(Noop::new());
        });
        p.task(Noop::new());
    });
    // The items' ids are still taken once their block ended.
    p.task(ItemLike::new());
    p.each(0..1u32, |p, _| p.task(ItemLike::new()));
}

#[process]
fn given_twice_from_items(p: &mut Builder) {
    p.task(Noop::new().id("x1"));
    p.each(0..3u32, |p, i| p.task(Noop::new().id(format!("x{i}"))));
}

#[test]
fn ids_of_each_items_stay_unique_across_items_blocks_and_names() {
    let g = Graph::of(NestedItems {}).unwrap();
    assert_eq!(
        g.node_ids(),
        vec![
            "x1",
            "each[0]/noop",
            "y0",
            "each[0]/each[0]/noop",
            "each[0]/each[0]/noop#1",
            "each[0]/each[1]/noop",
            "each[0]/each[1]/noop#1",
            "each[0]/noop#1",
            "each[1]/noop",
            "y1",
            "each[1]/each[0]/noop",
            "each[1]/each[0]/noop#1",
            "each[1]/each[1]/noop",
            "each[1]/each[1]/noop#1",
            "each[1]/noop#1",
            "each[1]/noop#2",
            "each#1[0]/each[1]/noop",
        ]
    );
    let err = Graph::of(GivenTwiceFromItems {}).unwrap_err();
    assert_eq!(
        err,
        GraphError::DuplicateId {
            id: "x1".into(),
            first: "`noop` (task 1)".into(),
            second: "`noop` (task 3)".into(),
        }
    );
}

/// The first id claimed in a table (the top level's, an `each` item's) is kept without its
/// hash until another id is looked up there: it must still be found by that lookup.
#[process]
fn first_ids_then_more(p: &mut Builder) {
    p.task(Noop::new());
    p.each(0..2u32, |p, _| {
        p.task(Noop::new());
        p.task(Noop::new());
        p.task(Noop::new());
    });
    p.task(Noop::new());
}

#[process]
fn given_like_the_first(p: &mut Builder) {
    p.task(Noop::new());
    p.task(Noop::new().id("noop"));
}

#[process]
fn given_like_the_first_block(p: &mut Builder) {
    p.sequential(|p| p.task(Noop::new()));
    p.task(Noop::new().id("sequential"));
}

#[test]
fn the_first_id_of_a_table_is_found_by_the_next_ones() {
    assert_eq!(
        Graph::of(FirstIdsThenMore {}).unwrap().node_ids(),
        vec![
            "noop",
            "each[0]/noop",
            "each[0]/noop#1",
            "each[0]/noop#2",
            "each[1]/noop",
            "each[1]/noop#1",
            "each[1]/noop#2",
            "noop#1",
        ]
    );
    assert_eq!(
        Graph::of(GivenLikeTheFirst {}).unwrap_err(),
        GraphError::DuplicateId {
            id: "noop".into(),
            first: "`noop` (task 1)".into(),
            second: "`noop` (task 2)".into(),
        }
    );
    assert_eq!(
        Graph::of(GivenLikeTheFirstBlock {}).unwrap_err(),
        GraphError::DuplicateId {
            id: "sequential".into(),
            first: "a `sequential` block".into(),
            second: "`noop` (task 2)".into(),
        }
    );
}

#[task]
fn total(xs: Vec<u32>) -> u32 {
    xs.iter().sum()
}

/// Fan-ins of three reads in every order, repeats included, of seven, and of three inside
/// a sequential block and an `after` block (their links are more than their reads): every
/// way the builder sorts a task's links.
#[process]
fn fan_ins(p: &mut Builder, width: u32) {
    let mut seed = 7_u64;
    let mut pick = move |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(seed >> 33).unwrap_or(0) % n
    };
    let first: Vec<Out<u32>> = p.each(0..width, |p, i| p.task(Num::new(i)));
    let n = first.len();
    let second: Vec<Out<u32>> = p.each(0..width, |p, _| {
        let ins: Vec<Out<u32>> = (0..3).map(|_| first[pick(n)]).collect();
        p.task(Total::new(ins))
    });
    let third: Vec<Out<u32>> = p.each(0..width, |p, _| {
        let ins: Vec<Out<u32>> = (0..7).map(|_| second[pick(n)]).collect();
        p.task(Total::new(ins))
    });
    p.sequential(|p| {
        p.each(0..width, |p, _| {
            let ins: Vec<Out<u32>> = (0..3).map(|_| third[pick(n)]).collect();
            p.task(Total::new(ins))
        })
    });
    p.after(&[first[0].node()], |p| {
        let ins: Vec<Out<u32>> = (0..3).map(|_| third[pick(n)]).collect();
        p.task(Total::new(ins))
    });
}

#[test]
fn fan_in_links_and_fingerprint_are_pinned() {
    let g = Graph::of(FanIns { width: 8 }).unwrap();
    assert_eq!(g.len(), 33);
    // The value the builder gave before its links were sorted by `sort_dedup` (as
    // recomputed when the fingerprint's definition changed from FNV-1a to XXH3 sums).
    assert_eq!(g.fingerprint(), 0x44c8_8adf_87be_b691);
}
