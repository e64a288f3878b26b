//! A graph of nodes and parent→child edges whose lock rules are compile errors
//! (QEMU: the `GRAPH_RDLOCK` / `GRAPH_WRLOCK` clang annotations on `BlockDriverState`'s
//! `children` and `parents` lists).
//!
//! Reading needs a [`ReadAccess`] guard — a [`ReadGuard`](crate::ReadGuard), the
//! [`MainLoopGuard`](crate::MainLoopGuard) or the [`WriteGuard`] — and returns
//! references that borrow it; changing edges needs `&mut WriteGuard`. So a write while
//! a reference from a read is alive does not compile:
//!
//! ```compile_fail,E0502
//! # use aioctx_graph::{Graph, graph_lock};
//! # aioctx_aio::main_context().make_current();
//! let graph = Graph::new();
//! let mut w = graph_lock().wrlock();
//! let a = graph.add_node(&mut w, "a");
//! let children = graph.children(&w, a).unwrap(); // borrows `w` shared ...
//! graph.add_node(&mut w, "b");                   // ... so this `&mut w` is an error
//! println!("{children:?}");
//! ```
//!
//! nor can the write guard be dropped — letting readers in — while such a reference
//! lives:
//!
//! ```compile_fail,E0505
//! # use aioctx_graph::{Graph, graph_lock};
//! # aioctx_aio::main_context().make_current();
//! let graph = Graph::new();
//! let mut w = graph_lock().wrlock();
//! let a = graph.add_node(&mut w, String::from("a"));
//! let s = graph.get(&w, a).unwrap(); // borrows `w` ...
//! drop(w);                           // ... so moving it out is an error
//! println!("{s}");
//! ```
//!
//! and the main loop's guards stay on the main loop (they are not `Send`), where the
//! lock can see them:
//!
//! ```compile_fail,E0277
//! # use aioctx_graph::graph_lock;
//! # aioctx_aio::main_context().make_current();
//! let r = graph_lock().rdlock_main_loop();
//! std::thread::spawn(move || drop(r)); // `*const ()` cannot be sent between threads
//! ```
//!
//! A read guard cannot stand in for the write guard:
//!
//! ```compile_fail,E0308
//! # use aioctx_graph::{Graph, graph_lock};
//! # aioctx_aio::main_context().make_current();
//! let graph: Graph<&str> = Graph::new();
//! let mut r = graph_lock().rdlock_main_loop();
//! graph.add_node(&mut r, "a"); // expected `&mut WriteGuard`, found `&mut MainLoopGuard`
//! ```
//!
//! Where the types cannot say it — a [`MainLoopGuard`](crate::MainLoopGuard) and the
//! write guard are taken from the same shared lock — the lock refuses at run time:
//! [`wrlock`](crate::GraphLock::wrlock) panics, before it takes the lock, while a
//! main-loop read guard or another write guard is alive.
//!
//! Nor can a graph be read with no guard at all:
//!
//! ```compile_fail,E0061
//! # use aioctx_graph::Graph;
//! let graph: Graph<&str> = Graph::new();
//! let n = graph.node_ids(); // missing the guard argument
//! ```

use std::cell::UnsafeCell;
use std::fmt;

use crate::lock::{ReadAccess, WriteGuard};

/// A node's handle. Stale after the node is removed (lookups then return `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(usize, u64);

/// Why an edge operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GraphError {
    /// The node does not exist (removed, or from another graph).
    NoSuchNode(NodeId),
    /// The edge to detach or replace does not exist.
    NoSuchEdge {
        /// The parent.
        parent: NodeId,
        /// The child.
        child: NodeId,
    },
    /// The edge would close a cycle.
    Cycle {
        /// The parent.
        parent: NodeId,
        /// The child.
        child: NodeId,
    },
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::NoSuchNode(n) => write!(f, "node {n:?} does not exist"),
            GraphError::NoSuchEdge { parent, child } => {
                write!(f, "node {parent:?} has no child {child:?}")
            }
            GraphError::Cycle { parent, child } => {
                write!(f, "attaching {child:?} under {parent:?} would make a cycle")
            }
        }
    }
}

impl std::error::Error for GraphError {}

struct Node<T> {
    generation: u64,
    value: T,
    children: Vec<NodeId>,
    parents: Vec<NodeId>,
}

struct Inner<T> {
    nodes: Vec<Option<Node<T>>>,
    free: Vec<usize>,
    generation: u64,
}

/// A graph guarded by the [graph lock](crate::graph_lock). See the module docs.
///
/// ```
/// use aioctx_graph::{Graph, graph_lock};
/// aioctx_aio::main_context().make_current();
/// let graph = Graph::new();
/// let mut w = graph_lock().wrlock();
/// let (root, file) = (graph.add_node(&mut w, "qcow2"), graph.add_node(&mut w, "file"));
/// graph.attach_child(&mut w, root, file)?;
/// drop(w);
/// let r = graph_lock().rdlock_main_loop();
/// assert_eq!(graph.children(&r, root), Some(&[file][..]));
/// assert_eq!(graph.get(&r, file), Some(&"file"));
/// # Ok::<(), aioctx_graph::GraphError>(())
/// ```
pub struct Graph<T> {
    inner: UnsafeCell<Inner<T>>,
}

// SAFETY: the data is read only through `&self` methods that take a `ReadAccess` guard,
// and written only through methods that take `&mut WriteGuard`. A `WriteGuard` exists
// only while the graph lock has a writer and no reader ([GL1]–[GL2] (`state.rs`)); at most one
// exists, and never alongside a main-loop read guard ([GL4]: `wrlock` panics before
// taking the lock otherwise, also when a callback of its own wait took one); and the
// borrow of the guard keeps every returned reference from outliving the access it was
// given under. Values cross threads through it, hence `T: Send + Sync`.
unsafe impl<T: Send + Sync> Sync for Graph<T> {}

impl<T> Default for Graph<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Graph<T> {
    /// An empty graph.
    pub const fn new() -> Self {
        Self {
            inner: UnsafeCell::new(Inner {
                nodes: Vec::new(),
                free: Vec::new(),
                generation: 0,
            }),
        }
    }

    fn read<'g>(&'g self, _: &'g impl ReadAccess) -> &'g Inner<T> {
        // SAFETY: a read guard is held for 'g (see the `Sync` impl).
        unsafe { &*self.inner.get() }
    }

    fn write<'g>(&'g self, _: &'g mut WriteGuard<'_>) -> &'g mut Inner<T> {
        // SAFETY: the write guard is held, borrowed exclusively for 'g (see `Sync`).
        unsafe { &mut *self.inner.get() }
    }

    /// Adds a node.
    pub fn add_node(&self, w: &mut WriteGuard<'_>, value: T) -> NodeId {
        let inner = self.write(w);
        inner.generation += 1;
        let node = Node {
            generation: inner.generation,
            value,
            children: Vec::new(),
            parents: Vec::new(),
        };
        let index = match inner.free.pop() {
            Some(i) => {
                inner.nodes[i] = Some(node);
                i
            }
            None => {
                inner.nodes.push(Some(node));
                inner.nodes.len() - 1
            }
        };
        NodeId(index, inner.generation)
    }

    /// Removes a node and every edge touching it; returns its value (dropped by the
    /// caller, outside the graph).
    ///
    /// # Errors
    /// [`GraphError::NoSuchNode`].
    pub fn remove_node(&self, w: &mut WriteGuard<'_>, id: NodeId) -> Result<T, GraphError> {
        let inner = self.write(w);
        inner.node(id)?;
        let node = inner.nodes[id.0].take().expect("checked above");
        inner.free.push(id.0);
        for c in &node.children {
            if let Some(Some(n)) = inner.nodes.get_mut(c.0) {
                n.parents.retain(|p| *p != id);
            }
        }
        for p in &node.parents {
            if let Some(Some(n)) = inner.nodes.get_mut(p.0) {
                n.children.retain(|c| *c != id);
            }
        }
        Ok(node.value)
    }

    /// Attaches `child` under `parent` (QEMU: `bdrv_attach_child`).
    ///
    /// # Errors
    /// A missing node, or a cycle.
    pub fn attach_child(
        &self,
        w: &mut WriteGuard<'_>,
        parent: NodeId,
        child: NodeId,
    ) -> Result<(), GraphError> {
        let inner = self.write(w);
        inner.check_new_edge(parent, child)?;
        inner.live_mut(parent).children.push(child);
        inner.live_mut(child).parents.push(parent);
        Ok(())
    }

    /// Detaches one `parent → child` edge (QEMU: `bdrv_unref_child`).
    ///
    /// # Errors
    /// A missing node or edge.
    pub fn detach_child(
        &self,
        w: &mut WriteGuard<'_>,
        parent: NodeId,
        child: NodeId,
    ) -> Result<(), GraphError> {
        let inner = self.write(w);
        let pos = inner.child_position(parent, child)?;
        inner.live_mut(parent).children.remove(pos);
        inner.unlink_parent(child, parent);
        Ok(())
    }

    /// Replaces the `parent → old` edge by `parent → new`, keeping its position
    /// (QEMU: `bdrv_replace_child_noperm`).
    ///
    /// # Errors
    /// A missing node or edge, or a cycle.
    pub fn replace_child(
        &self,
        w: &mut WriteGuard<'_>,
        parent: NodeId,
        old: NodeId,
        new: NodeId,
    ) -> Result<(), GraphError> {
        let inner = self.write(w);
        let pos = inner.child_position(parent, old)?;
        inner.check_new_edge(parent, new)?;
        inner.live_mut(parent).children[pos] = new;
        inner.unlink_parent(old, parent);
        inner.live_mut(new).parents.push(parent);
        Ok(())
    }

    /// A node's value.
    pub fn get<'g>(&'g self, r: &'g impl ReadAccess, id: NodeId) -> Option<&'g T> {
        self.read(r).node(id).ok().map(|n| &n.value)
    }

    /// A node's children, in attach order.
    pub fn children<'g>(&'g self, r: &'g impl ReadAccess, id: NodeId) -> Option<&'g [NodeId]> {
        self.read(r).node(id).ok().map(|n| &n.children[..])
    }

    /// A node's parents.
    pub fn parents<'g>(&'g self, r: &'g impl ReadAccess, id: NodeId) -> Option<&'g [NodeId]> {
        self.read(r).node(id).ok().map(|n| &n.parents[..])
    }

    /// Every live node.
    pub fn node_ids(&self, r: &impl ReadAccess) -> Vec<NodeId> {
        self.read(r)
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| NodeId(i, n.generation)))
            .collect()
    }
}

impl<T> Inner<T> {
    fn node(&self, id: NodeId) -> Result<&Node<T>, GraphError> {
        match self.nodes.get(id.0) {
            Some(Some(n)) if n.generation == id.1 => Ok(n),
            _ => Err(GraphError::NoSuchNode(id)),
        }
    }

    /// A node already checked to be live.
    fn live_mut(&mut self, id: NodeId) -> &mut Node<T> {
        self.nodes[id.0].as_mut().expect("checked live")
    }

    /// Checks that `parent → child` may be added: both live, no cycle.
    fn check_new_edge(&self, parent: NodeId, child: NodeId) -> Result<(), GraphError> {
        self.node(parent)?;
        self.node(child)?;
        if parent == child || self.reaches(child, parent) {
            return Err(GraphError::Cycle { parent, child });
        }
        Ok(())
    }

    /// Where `child` sits among `parent`'s children (both checked live).
    fn child_position(&self, parent: NodeId, child: NodeId) -> Result<usize, GraphError> {
        self.node(child)?;
        self.node(parent)?
            .children
            .iter()
            .position(|c| *c == child)
            .ok_or(GraphError::NoSuchEdge { parent, child })
    }

    /// Removes one `parent` entry from `child`'s parents (edges are kept symmetric).
    fn unlink_parent(&mut self, child: NodeId, parent: NodeId) {
        let parents = &mut self.live_mut(child).parents;
        let pos = parents
            .iter()
            .position(|p| *p == parent)
            .expect("edges are symmetric");
        parents.remove(pos);
    }

    /// Whether `to` is reachable from `from` along child edges.
    fn reaches(&self, from: NodeId, to: NodeId) -> bool {
        let mut stack = vec![from];
        let mut seen = std::collections::HashSet::new();
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n)
                && let Ok(node) = self.node(n)
            {
                stack.extend(node.children.iter().copied());
            }
        }
        false
    }
}
