//! Model packages on disk: a folder with `model.toml` and the files it lists. Opening a package
//! parses the manifest; reading a graph checks its sha256 first, so a file changed after the
//! manifest was written never runs.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{Family, Graph, GraphSpec, Manifest, ModelError, Precision};
use crate::preprocess::{Normalize, Preprocessor};

/// The manifest file name inside a package folder.
pub const MANIFEST: &str = "model.toml";

/// The package used when `--model` is not given, relative to the working directory or, when
/// not found there, to the folder two levels above the executable (`target/release/..`).
pub const DEFAULT_MODEL: &str = "models/clipseg-phantom";

/// An opened model package.
#[derive(Debug, Clone)]
pub struct Package {
    dir: PathBuf,
    manifest: Manifest,
}

/// What `verify` found for one graph file.
#[derive(Debug, Clone)]
pub struct GraphCheck {
    pub file: String,
    pub role: String,
    pub precisions: Vec<Precision>,
}

impl Package {
    /// Reads and checks `dir/model.toml`.
    pub fn open(dir: &Path) -> Result<Package, ModelError> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text, &path)?;
        Ok(Package {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Finds the default package (see [`DEFAULT_MODEL`]).
    pub fn default_dir() -> PathBuf {
        let here = PathBuf::from(DEFAULT_MODEL);
        if here.join(MANIFEST).exists() {
            return here;
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join(DEFAULT_MODEL)))
            .filter(|p| p.join(MANIFEST).exists())
            .unwrap_or(here)
    }

    /// Every package folder directly under `root` (those holding a `model.toml`), sorted.
    pub fn discover(root: &Path) -> Result<Vec<PathBuf>, ModelError> {
        let entries = fs::read_dir(root).map_err(|source| ModelError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join(MANIFEST).is_file())
            .collect();
        dirs.sort();
        Ok(dirs)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// A file of the package.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The graph spec for a role and precision, or an error listing what the package serves.
    pub fn graph_spec(&self, role: &str, precision: Precision) -> Result<&GraphSpec, ModelError> {
        self.manifest
            .graph(role, precision)
            .ok_or_else(|| ModelError::Precision {
                model: self.manifest.name.clone(),
                role: role.to_string(),
                precision,
                available: self
                    .manifest
                    .precisions()
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Reads a graph file and checks its hash.
    pub fn read_graph(&self, spec: &GraphSpec) -> Result<Vec<u8>, ModelError> {
        self.read_checked(&spec.file, &spec.sha256)
    }

    /// Reads a file of the package and checks it against its sha256.
    pub fn read_checked(&self, file: &str, sha256: &str) -> Result<Vec<u8>, ModelError> {
        let path = self.path(file);
        let bytes = fs::read(&path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let found = hex(&Sha256::digest(&bytes));
        if !found.eq_ignore_ascii_case(sha256) {
            return Err(ModelError::Hash {
                path,
                expected: sha256.to_string(),
                found,
            });
        }
        Ok(bytes)
    }

    /// An error unless the package is of `family`.
    pub fn require(&self, family: Family) -> Result<(), ModelError> {
        if self.manifest.family == family {
            return Ok(());
        }
        Err(ModelError::Family {
            model: self.manifest.name.clone(),
            expected: family.as_str(),
            found: self.manifest.family.as_str(),
        })
    }

    /// The frame preprocessor the manifest's `[input]` describes (2D families).
    pub fn preprocessor(&self) -> Result<Preprocessor, ModelError> {
        let input = self.manifest.input();
        let [w, h] = input.size;
        let normalize = Normalize {
            mean: input.mean,
            std: input.std,
        };
        Preprocessor::new(w, h, input.resize, normalize).map_err(|e| ModelError::Manifest {
            path: self.path(MANIFEST),
            message: e.to_string(),
        })
    }

    /// Loads the graph for a role at a precision, hash and contract checked.
    pub fn load_graph(
        &self,
        role: &str,
        precision: Precision,
        threads: usize,
    ) -> Result<Graph, ModelError> {
        let spec = self.graph_spec(role, precision)?;
        let bytes = self.read_graph(spec)?;
        Graph::load(&bytes, &self.path(&spec.file), spec, precision, threads)
    }

    /// [`Package::load_graph`] of each role, each on its own thread (parsing and optimising
    /// are most of a model's start-up), in the order given; the first error if any fails.
    pub fn load_graphs<const N: usize>(
        &self,
        roles: [&str; N],
        precision: Precision,
        threads: usize,
    ) -> Result<[Graph; N], ModelError> {
        let loaded: Vec<Result<Graph, ModelError>> = std::thread::scope(|scope| {
            let handles =
                roles.map(|role| scope.spawn(move || self.load_graph(role, precision, threads)));
            handles
                .into_iter()
                .map(|h| h.join().expect("graph loading does not panic"))
                .collect()
        });
        let graphs = loaded.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(graphs
            .try_into()
            .unwrap_or_else(|_| unreachable!("one graph per role")))
    }

    /// Checks every graph file: hash, then the full load at each precision it serves. f32 and
    /// int8 take a file as it is, so one of them is loaded; f16 translates it and is loaded too.
    pub fn verify(&self) -> Result<Vec<GraphCheck>, ModelError> {
        let mut checks = Vec::new();
        for spec in &self.manifest.graphs {
            let bytes = self.read_graph(spec)?;
            let mut loaded_as_is = false;
            for &p in &spec.precisions {
                let as_is = p != Precision::F16;
                if as_is && loaded_as_is {
                    continue;
                }
                loaded_as_is |= as_is;
                Graph::load(&bytes, &self.path(&spec.file), spec, p, 1)?;
            }
            checks.push(GraphCheck {
                file: spec.file.clone(),
                role: spec.role.clone(),
                precisions: spec.precisions.clone(),
            });
        }
        Ok(checks)
    }
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
