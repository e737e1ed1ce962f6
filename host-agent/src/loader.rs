//! Loading a guest kernel: a static x86_64 ELF executable, checked before a byte is copied.
//!
//! The image is untrusted input (a file on disk): every header field is bounds-checked, every
//! loadable segment must lie inside the OS's own segment (below its boot stack), and the entry
//! point must be inside an executable loaded segment.

use shm_ring::layout::Region;
use zerocopy::{
    FromBytes, Immutable, KnownLayout,
    little_endian::{U16, U32, U64},
};

use crate::memory::{GuestAddress, GuestMemory, MemoryError};

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const CLASS_64: u8 = 2;
const DATA_LITTLE_ENDIAN: u8 = 1;
const TYPE_EXECUTABLE: u16 = 2;
const MACHINE_X86_64: u16 = 62;
const SEGMENT_LOAD: u32 = 1;
const FLAG_EXECUTE: u32 = 1;

#[derive(FromBytes, Immutable, KnownLayout)]
#[repr(C)]
struct FileHeader {
    ident: [u8; 16],
    kind: U16,
    machine: U16,
    version: U32,
    entry: U64,
    program_header_offset: U64,
    section_header_offset: U64,
    flags: U32,
    header_size: U16,
    program_header_size: U16,
    program_header_count: U16,
    section_header_size: U16,
    section_header_count: U16,
    section_name_index: U16,
}

#[derive(FromBytes, Immutable, KnownLayout)]
#[repr(C)]
struct ProgramHeader {
    kind: U32,
    flags: U32,
    offset: U64,
    virtual_address: U64,
    physical_address: U64,
    file_size: U64,
    memory_size: U64,
    align: U64,
}

/// Why an image was rejected.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not an ELF file.
    #[error("not an ELF file (bad magic)")]
    BadMagic,
    /// An ELF file, but not a 64-bit little-endian x86_64 executable.
    #[error("not a 64-bit little-endian x86_64 executable ({0})")]
    WrongKind(&'static str),
    /// A header points outside the file.
    #[error("ELF {0} lies outside the file")]
    Truncated(&'static str),
    /// A loadable segment lies outside the memory the OS may use for its image.
    #[error("segment at {address:#x}+{size:#x} is outside the OS's memory {allowed:#x?}")]
    SegmentOutside {
        /// Segment start.
        address: u64,
        /// Segment size in memory.
        size: u64,
        /// Where it would have had to be.
        allowed: Region,
    },
    /// The file size of a segment exceeds its memory size.
    #[error("segment at {0:#x} has more file bytes than memory bytes")]
    FileLargerThanMemory(u64),
    /// The entry point is not inside an executable loaded segment.
    #[error("entry point {0:#x} is not in an executable segment")]
    BadEntry(u64),
    /// Nothing to load.
    #[error("no loadable segments")]
    NoSegments,
    /// Writing guest memory failed.
    #[error("cannot write the image into guest memory")]
    Memory(#[from] MemoryError),
}

/// What was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedImage {
    /// Entry point.
    pub entry: u64,
    /// One past the highest loaded byte.
    pub end: u64,
}

/// One loadable segment of a checked image.
struct Segment<'a> {
    address: u64,
    bytes: &'a [u8],
    memory_size: u64,
    executable: bool,
}

/// Checks `image` and returns its entry point and loadable segments.
fn segments(image: &[u8], allowed: Region) -> Result<(u64, Vec<Segment<'_>>), LoadError> {
    let (header, _) = FileHeader::read_from_prefix(image).map_err(|_| LoadError::BadMagic)?;
    if header.ident[..4] != ELF_MAGIC {
        return Err(LoadError::BadMagic);
    }
    if header.ident[4] != CLASS_64 {
        return Err(LoadError::WrongKind("not 64-bit"));
    }
    if header.ident[5] != DATA_LITTLE_ENDIAN {
        return Err(LoadError::WrongKind("not little-endian"));
    }
    if header.machine.get() != MACHINE_X86_64 {
        return Err(LoadError::WrongKind("machine is not x86_64"));
    }
    if header.kind.get() != TYPE_EXECUTABLE {
        return Err(LoadError::WrongKind("not a static executable"));
    }
    if usize::from(header.program_header_size.get()) != size_of::<ProgramHeader>() {
        return Err(LoadError::WrongKind("unexpected program header size"));
    }
    let count = usize::from(header.program_header_count.get());
    let table_start = usize::try_from(header.program_header_offset.get())
        .map_err(|_| LoadError::Truncated("program header table"))?;
    let table = table_start
        .checked_add(count * size_of::<ProgramHeader>())
        .and_then(|end| image.get(table_start..end))
        .ok_or(LoadError::Truncated("program header table"))?;
    let mut loads = Vec::new();
    for raw in table.chunks_exact(size_of::<ProgramHeader>()) {
        let Ok(program) = ProgramHeader::read_from_bytes(raw) else {
            return Err(LoadError::Truncated("program header"));
        };
        if program.kind.get() != SEGMENT_LOAD || program.memory_size.get() == 0 {
            continue;
        }
        let address = program.physical_address.get();
        let memory_size = program.memory_size.get();
        let file_size = program.file_size.get();
        if !allowed.contains_range(address, memory_size) {
            return Err(LoadError::SegmentOutside {
                address,
                size: memory_size,
                allowed,
            });
        }
        if file_size > memory_size {
            return Err(LoadError::FileLargerThanMemory(address));
        }
        let offset =
            usize::try_from(program.offset.get()).map_err(|_| LoadError::Truncated("segment"))?;
        let bytes = offset
            .checked_add(file_size as usize)
            .and_then(|end| image.get(offset..end))
            .ok_or(LoadError::Truncated("segment"))?;
        let executable = program.flags.get() & FLAG_EXECUTE != 0;
        loads.push(Segment {
            address,
            bytes,
            memory_size,
            executable,
        });
    }
    if loads.is_empty() {
        return Err(LoadError::NoSegments);
    }
    let entry = header.entry.get();
    let entry_ok = loads.iter().any(|segment| {
        segment.executable
            && Region::new(segment.address, segment.memory_size).contains_range(entry, 1)
    });
    if !entry_ok {
        return Err(LoadError::BadEntry(entry));
    }
    Ok((entry, loads))
}

/// Loads `image` into `memory`; every segment must lie inside `allowed`.
pub fn load_elf(
    memory: &GuestMemory,
    image: &[u8],
    allowed: Region,
) -> Result<LoadedImage, LoadError> {
    let (entry, loads) = segments(image, allowed)?;
    let mut end = 0;
    for segment in loads {
        let file_end = segment.address + segment.bytes.len() as u64;
        memory.write(GuestAddress(segment.address), segment.bytes)?;
        let tail = segment.memory_size - segment.bytes.len() as u64;
        if tail > 0 {
            memory.zero(GuestAddress(file_end), tail)?;
        }
        end = end.max(segment.address + segment.memory_size);
    }
    Ok(LoadedImage { entry, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid image: one executable segment at 0x100_0000 holding `hlt`.
    fn image() -> Vec<u8> {
        let mut bytes = vec![0u8; 0x200];
        bytes[..4].copy_from_slice(&ELF_MAGIC);
        bytes[4] = CLASS_64;
        bytes[5] = DATA_LITTLE_ENDIAN;
        bytes[16..18].copy_from_slice(&TYPE_EXECUTABLE.to_le_bytes());
        bytes[18..20].copy_from_slice(&MACHINE_X86_64.to_le_bytes());
        bytes[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes()); // entry
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&1u16.to_le_bytes());
        let program = 64;
        bytes[program..program + 4].copy_from_slice(&SEGMENT_LOAD.to_le_bytes());
        bytes[program + 4..program + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        bytes[program + 8..program + 16].copy_from_slice(&0x100u64.to_le_bytes());
        bytes[program + 16..program + 24].copy_from_slice(&0x100_0000u64.to_le_bytes());
        bytes[program + 24..program + 32].copy_from_slice(&0x100_0000u64.to_le_bytes());
        bytes[program + 32..program + 40].copy_from_slice(&1u64.to_le_bytes());
        bytes[program + 40..program + 48].copy_from_slice(&0x2000u64.to_le_bytes());
        bytes[0x100] = 0xf4;
        bytes
    }

    fn allowed() -> Region {
        Region::new(0x100_0000, 0x20_0000)
    }

    #[test]
    fn loads_a_valid_image_and_zeroes_bss() {
        let memory = GuestMemory::new(&[allowed()]).unwrap();
        memory.write(GuestAddress(0x100_0001), &[0xaa; 16]).unwrap();
        let loaded = load_elf(&memory, &image(), allowed()).unwrap();
        assert_eq!(
            loaded,
            LoadedImage {
                entry: 0x100_0000,
                end: 0x100_2000
            }
        );
        assert_eq!(
            memory.read_obj::<u8>(GuestAddress(0x100_0000)).unwrap(),
            0xf4
        );
        assert_eq!(memory.read_obj::<u64>(GuestAddress(0x100_0001)).unwrap(), 0);
    }

    #[test]
    fn rejects_bad_images() {
        let check = |bytes: Vec<u8>| segments(&bytes, allowed()).map(|_| ()).unwrap_err();
        let mut bad = image();
        bad[0] = 0;
        assert!(matches!(check(bad), LoadError::BadMagic));
        assert!(matches!(check(vec![0x7f, b'E']), LoadError::BadMagic));
        let mut bad = image();
        bad[18] = 40; // ARM
        assert!(matches!(check(bad), LoadError::WrongKind(_)));
        let mut bad = image();
        bad[64 + 24..64 + 32].copy_from_slice(&0x4000_0000u64.to_le_bytes());
        assert!(matches!(check(bad), LoadError::SegmentOutside { .. }));
        let mut bad = image();
        bad[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(check(bad), LoadError::Truncated(_)));
        let mut bad = image();
        bad[32..40].copy_from_slice(&0xffff_fff0u64.to_le_bytes());
        assert!(matches!(check(bad), LoadError::Truncated(_)));
        let mut bad = image();
        bad[24..32].copy_from_slice(&0x100_5000u64.to_le_bytes());
        assert!(matches!(check(bad), LoadError::BadEntry(_)));
        let mut bad = image();
        bad[64 + 32..64 + 40].copy_from_slice(&0x3000u64.to_le_bytes());
        assert!(matches!(check(bad), LoadError::FileLargerThanMemory(_)));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512), flip in 0usize..0x200, value: u8) {
            let _ = segments(&bytes, allowed());
            let mut mutated = image();
            mutated[flip] = value;
            let _ = segments(&mutated, allowed());
        }
    }
}
