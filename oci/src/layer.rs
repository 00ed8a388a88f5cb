//! Getting the ELF object out of a layer: a tar, gzip'd or not, with the object at its
//! root. Reading is bounded so a small layer cannot inflate into gigabytes.

use std::io::{self, Read};

use flate2::read::GzDecoder;

use crate::error::{Error, Result};
use crate::limits::{MAX_ELF_BYTES, MAX_LAYER_UNPACKED_BYTES};

/// The object found in a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfFile {
    /// Its file name at the layer's root.
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Stops with an error once more than `left` bytes have been read.
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "unpacked layer too large"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const EM_BPF: u16 = 247;

/// Unpack `layer` (gzip detected by its magic bytes: some tools label gzip'd layers as
/// plain tar and the other way round) and return the ELF object at its root: the only
/// `*.o` file, else the only ELF file.
pub fn extract_elf(layer: &[u8], layer_digest: &str) -> Result<ElfFile> {
    let reader: Box<dyn Read + '_> =
        if layer.starts_with(&GZIP_MAGIC) { Box::new(GzDecoder::new(layer)) } else { Box::new(layer) };
    let bounded = Bounded { inner: reader, left: MAX_LAYER_UNPACKED_BYTES };
    let too_large =
        || Error::TooLarge { what: format!("layer {layer_digest} unpacked"), limit: MAX_LAYER_UNPACKED_BYTES };
    let unreadable = |e: io::Error| {
        if e.kind() == io::ErrorKind::FileTooLarge {
            too_large()
        } else {
            Error::NotBytecode { reason: format!("layer {layer_digest} is not a readable tar (gzip'd or not): {e}") }
        }
    };
    let mut archive = tar::Archive::new(bounded);
    let mut files: Vec<ElfFile> = Vec::new();
    let mut skipped = Vec::new();
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let path = entry.path().map_err(unreadable)?.to_string_lossy().into_owned();
        let name = path.trim_start_matches("./").trim_start_matches('/').to_string();
        if !entry.header().entry_type().is_file() || name.is_empty() || name.contains('/') {
            if !name.is_empty() && entry.header().entry_type().is_file() {
                skipped.push(name);
            }
            continue;
        }
        let size = entry.header().size().map_err(unreadable)?;
        if size > MAX_ELF_BYTES {
            return Err(Error::TooLarge {
                what: format!("file {name} in the layer ({size} bytes)"),
                limit: MAX_ELF_BYTES,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        (&mut entry).take(MAX_ELF_BYTES + 1).read_to_end(&mut bytes).map_err(unreadable)?;
        files.push(ElfFile { name, bytes });
    }
    choose(files, &skipped)
}

fn choose(files: Vec<ElfFile>, below_root: &[String]) -> Result<ElfFile> {
    let names = |fs: &[&ElfFile]| fs.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ");
    let objects: Vec<&ElfFile> = files.iter().filter(|f| f.name.ends_with(".o")).collect();
    let chosen = match objects.as_slice() {
        [one] => *one,
        [] => {
            let elves: Vec<&ElfFile> = files.iter().filter(|f| f.bytes.starts_with(&ELF_MAGIC)).collect();
            match elves.as_slice() {
                [one] => *one,
                [] => {
                    let all: Vec<&ElfFile> = files.iter().collect();
                    let mut reason = format!(
                        "no ELF object at the layer's root (files there: {})",
                        if all.is_empty() { "none".to_string() } else { names(&all) }
                    );
                    if !below_root.is_empty() {
                        reason
                            .push_str(&format!("; files below the root are not considered: {}", below_root.join(", ")));
                    }
                    return Err(Error::NotBytecode {
                        reason: format!("{reason}; put the .o file at the root (COPY x.o /)"),
                    });
                }
                many => {
                    return Err(Error::NotBytecode {
                        reason: format!(
                            "several ELF files at the layer's root ({}); ship one object per image",
                            names(many)
                        ),
                    });
                }
            }
        }
        many => {
            return Err(Error::NotBytecode {
                reason: format!("several .o files at the layer's root ({}); ship one object per image", names(many)),
            });
        }
    };
    check_bpf_elf(&chosen.name, &chosen.bytes)?;
    let name = chosen.name.clone();
    Ok(files.into_iter().find(|f| f.name == name).expect("chosen from files"))
}

/// The file is an ELF object for eBPF (`clang -target bpf`).
pub fn check_bpf_elf(name: &str, bytes: &[u8]) -> Result<()> {
    if !bytes.starts_with(&ELF_MAGIC) || bytes.len() < 20 {
        return Err(Error::NotBytecode { reason: format!("{name} is not an ELF file") });
    }
    let machine = match bytes[5] {
        1 => u16::from_le_bytes([bytes[18], bytes[19]]),
        _ => u16::from_be_bytes([bytes[18], bytes[19]]),
    };
    if machine != EM_BPF {
        return Err(Error::NotBytecode {
            reason: format!(
                "{name} is an ELF file for machine {machine}, not eBPF (247); build it with clang -target bpf"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// A minimal little-endian eBPF ELF header, enough for the checks here.
    pub(crate) fn fake_bpf_elf(extra: usize) -> Vec<u8> {
        let mut b = vec![0u8; 64 + extra];
        b[..4].copy_from_slice(&ELF_MAGIC);
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&EM_BPF.to_le_bytes());
        b
    }

    pub(crate) fn tar_of(files: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            builder.append_data(&mut h, name, *data).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        if !gzip {
            return tar;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn picks_the_object_at_the_root() {
        let elf = fake_bpf_elf(10);
        for gzip in [true, false] {
            let layer = tar_of(&[("./README", b"hi"), ("./prog.o", &elf), ("sub/other.o", &elf)], gzip);
            let f = extract_elf(&layer, "sha256:l").unwrap();
            assert_eq!((f.name.as_str(), f.bytes.as_slice()), ("prog.o", elf.as_slice()));
        }
        // No .o: the only ELF file.
        let f = extract_elf(&tar_of(&[("bytecode", &elf), ("LICENSE", b"x")], true), "l").unwrap();
        assert_eq!(f.name, "bytecode");
    }

    #[test]
    fn clear_errors_for_no_or_several_objects() {
        let elf = fake_bpf_elf(0);
        let e = extract_elf(&tar_of(&[("a.o", &elf), ("b.o", &elf)], true), "l").unwrap_err();
        assert!(e.to_string().contains("several .o files at the layer's root (a.o, b.o)"), "{e}");
        let e = extract_elf(&tar_of(&[("x", &elf), ("y", &elf)], true), "l").unwrap_err();
        assert!(e.to_string().contains("several ELF files"), "{e}");
        let e = extract_elf(&tar_of(&[("README", b"x"), ("dir/p.o", &elf)], true), "l").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::NotBytecode);
        assert!(e.to_string().contains("files below the root are not considered: dir/p.o"), "{e}");
        let mut x86 = fake_bpf_elf(0);
        x86[18] = 62;
        let e = extract_elf(&tar_of(&[("p.o", &x86)], true), "l").unwrap_err();
        assert!(e.to_string().contains("machine 62, not eBPF"), "{e}");
        let e = extract_elf(b"\x1f\x8bgarbage", "sha256:abc").unwrap_err();
        assert!(e.to_string().contains("layer sha256:abc is not a readable tar"), "{e}");
    }

    #[test]
    fn oversized_files_and_bombs_stop_early() {
        // A file over the ELF limit: refused by its header, before its bytes are read.
        let big = vec![0u8; (MAX_ELF_BYTES + 1) as usize];
        let e = extract_elf(&tar_of(&[("p.o", &big)], true), "l").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::TooLarge);
        assert!(e.to_string().contains("file p.o in the layer"), "{e}");
        // Many files that together inflate past the unpacked limit: stopped by the bound.
        let chunk = vec![0u8; 8 << 20];
        let files: Vec<(String, &[u8])> = (0..6).map(|i| (format!("f{i}"), chunk.as_slice())).collect();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        let layer = tar_of(&refs, true);
        assert!(layer.len() < 1 << 20, "compresses well: {}", layer.len());
        let e = extract_elf(&layer, "l").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::TooLarge, "{e}");
    }
}
