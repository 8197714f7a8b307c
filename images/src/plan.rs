//! Which images a build request needs, in the order they must be built: every image after its
//! parent. Pure: works on any catalogue slice, so tests can hand it one in the wrong order.

use crate::catalogue::ImageSpec;
use crate::{Error, Result};

/// One image of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned<'a> {
    pub spec: &'a ImageSpec,
    /// Named in the request (or the request named nothing, meaning everything). `false` for an
    /// ancestor that is only there because a requested image is built on it.
    pub requested: bool,
}

/// The images needed for `only` (all of them when empty) with their ancestors, parents first.
/// Among images that do not depend on each other the catalogue's order is kept.
pub fn build_order<'a>(catalogue: &'a [ImageSpec], only: &[String]) -> Result<Vec<Planned<'a>>> {
    let find = |name: &str| catalogue.iter().position(|s| s.name == name);
    let requested: Vec<usize> = if only.is_empty() {
        (0..catalogue.len()).collect()
    } else {
        only.iter()
            .map(|name| {
                find(name).ok_or_else(|| Error::UnknownImage {
                    name: name.clone(),
                    known: catalogue.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
                })
            })
            .collect::<Result<_>>()?
    };

    // Depth-first through parents; `state` catches a cycle (a catalogue mistake).
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        Visiting,
        Done,
    }
    let mut state = vec![State::New; catalogue.len()];
    let mut order = Vec::new();
    fn visit(
        at: usize,
        catalogue: &[ImageSpec],
        state: &mut [State],
        order: &mut Vec<usize>,
        find: &dyn Fn(&str) -> Option<usize>,
    ) -> Result<()> {
        match state[at] {
            State::Done => return Ok(()),
            State::Visiting => return Err(Error::Catalogue(format!("{} is its own ancestor", catalogue[at].name))),
            State::New => {}
        }
        state[at] = State::Visiting;
        if let Some(parent) = catalogue[at].parent {
            let p = find(parent).ok_or_else(|| {
                Error::Catalogue(format!("{}'s parent {parent} is not in the catalogue", catalogue[at].name))
            })?;
            visit(p, catalogue, state, order, find)?;
        }
        state[at] = State::Done;
        order.push(at);
        Ok(())
    }
    let mut sorted_requests = requested.clone();
    sorted_requests.sort_unstable();
    for &at in &sorted_requests {
        visit(at, catalogue, &mut state, &mut order, &find)?;
    }
    Ok(order.into_iter().map(|at| Planned { spec: &catalogue[at], requested: requested.contains(&at) }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{CATALOGUE, ImageKind, Source};
    use rstest::rstest;

    fn names(plan: &[Planned]) -> Vec<String> {
        plan.iter().map(|p| if p.requested { p.spec.name.to_string() } else { format!("({})", p.spec.name) }).collect()
    }

    #[rstest]
    #[case::everything(&[], &["rootfs", "base", "java", "python", "node", "ci-agent", "controller", "portal"])]
    #[case::one_variant(&["python"], &["(rootfs)", "(base)", "python"])]
    #[case::two_variants(&["node", "java"], &["(rootfs)", "(base)", "java", "node"])]
    #[case::variant_and_its_base(&["python", "base"], &["(rootfs)", "base", "python"])]
    #[case::ci_agent_needs_no_desktop(&["ci-agent"], &["(rootfs)", "ci-agent"])]
    #[case::rootfs_alone(&["rootfs"], &["rootfs"])]
    #[case::platform_images_need_no_desktop(&["portal", "controller"], &["(rootfs)", "controller", "portal"])]
    #[case::repeated(&["python", "python"], &["(rootfs)", "(base)", "python"])]
    fn order_of_the_real_catalogue(#[case] only: &[&str], #[case] expected: &[&str]) {
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        assert_eq!(names(&build_order(CATALOGUE, &only).unwrap()), expected);
    }

    const fn spec(name: &'static str, parent: Option<&'static str>) -> ImageSpec {
        ImageSpec {
            name,
            tag: name,
            kind: ImageKind::Desktop,
            parent,
            source: Source::Dockerfile { dir: name, binaries: &[] },
            summary: "",
        }
    }

    #[test]
    fn children_listed_first_are_still_built_after_their_parents() {
        let shuffled = [spec("leaf", Some("mid")), spec("mid", Some("root")), spec("root", None)];
        assert_eq!(names(&build_order(&shuffled, &[]).unwrap()), ["root", "mid", "leaf"]);
        assert_eq!(names(&build_order(&shuffled, &["leaf".into()]).unwrap()), ["(root)", "(mid)", "leaf"]);
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let err = build_order(CATALOGUE, &["cobol".into()]).unwrap_err().to_string();
        assert!(err.contains("cobol") && err.contains("python, node, ci-agent, controller, portal"), "{err}");
    }

    #[test]
    fn a_cycle_or_a_missing_parent_is_a_catalogue_error() {
        let cycle = [spec("a", Some("b")), spec("b", Some("a"))];
        assert!(matches!(build_order(&cycle, &[]), Err(Error::Catalogue(_))));
        let orphan = [spec("a", Some("nowhere"))];
        assert!(matches!(build_order(&orphan, &[]), Err(Error::Catalogue(_))));
    }
}
