//! Finding USB serial instruments through sysfs, without libudev.
//!
//! Every tty in `/sys/class/tty/<name>` that belongs to a USB CDC ACM function has a `device` link to
//! its USB *interface* directory (e.g. `.../usb1/1-2/1-2:1.0`), which holds `bInterfaceNumber`; the
//! interface's parent is the USB *device* directory with `idVendor`, `idProduct`, `serial`, `product`.
//! That is all udev itself reads to build `/dev/serial/by-id`.
//!
//! A PPK2 (USB `1915:c00a`, [N] Nordic's vendor ID and the PPK2 product ID used by nRF Connect's device
//! list and by `IRNAS/ppk2-api-python` users filtering on `product == "PPK2"`) exposes two CDC ACM
//! functions. Nordic's app talks to the first serial port of the device (the lower interface number);
//! bench reports show some firmware revisions answering on the other one, so
//! [`super::ppk2::Ppk2::open_auto`] tries the candidates in this order and keeps the first that answers
//! `GET_META_DATA` with a metadata block.

use std::fs;
use std::path::{Path, PathBuf};

/// Where sysfs is mounted.
pub const SYSFS_ROOT: &str = "/sys";
/// Nordic Semiconductor's USB vendor ID.
pub const PPK2_VID: u16 = 0x1915;
/// The PPK2's USB product ID.
pub const PPK2_PID: u16 = 0xC00A;

/// A tty that belongs to a USB device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsbSerialPort {
    /// Kernel name, e.g. `ttyACM0`.
    pub tty: String,
    /// `/dev/<tty>`.
    pub dev_path: PathBuf,
    pub vid: u16,
    pub pid: u16,
    /// `bInterfaceNumber` of the interface the tty hangs off.
    pub interface: Option<u8>,
    pub serial: Option<String>,
    pub product: Option<String>,
    /// The USB device directory (groups the ports of one physical instrument).
    pub usb_device: PathBuf,
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn read_hex_u16(path: &Path) -> Option<u16> {
    u16::from_str_radix(&read_trimmed(path)?, 16).ok()
}

/// Every tty under `<sys_root>/class/tty` whose device is (an interface of) a USB device, sorted by USB
/// device and interface number.
pub fn list_usb_serial_ports(sys_root: &Path) -> Vec<UsbSerialPort> {
    let class = sys_root.join("class/tty");
    let Ok(entries) = fs::read_dir(&class) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let tty = entry.file_name().to_string_lossy().into_owned();
        // Resolve the `device` link to the physical interface directory, then go up to the USB device.
        let Ok(interface_dir) = fs::canonicalize(entry.path().join("device")) else { continue };
        let candidates = [Some(interface_dir.as_path()), interface_dir.parent()];
        // Some drivers (usb-serial adapters) put one more level between tty and interface: try both
        // the interface's parent and the directory itself for idVendor.
        let Some(usb_device) = candidates.into_iter().flatten().find(|d| d.join("idVendor").is_file()) else {
            continue;
        };
        let (Some(vid), Some(pid)) =
            (read_hex_u16(&usb_device.join("idVendor")), read_hex_u16(&usb_device.join("idProduct")))
        else {
            continue;
        };
        let interface =
            read_trimmed(&interface_dir.join("bInterfaceNumber")).and_then(|s| u8::from_str_radix(&s, 16).ok());
        out.push(UsbSerialPort {
            dev_path: Path::new("/dev").join(&tty),
            tty,
            vid,
            pid,
            interface,
            serial: read_trimmed(&usb_device.join("serial")),
            product: read_trimmed(&usb_device.join("product")),
            usb_device: usb_device.to_path_buf(),
        });
    }
    out.sort_by(|a, b| (&a.usb_device, a.interface, &a.tty).cmp(&(&b.usb_device, b.interface, &b.tty)));
    out
}

/// The PPK2 serial ports under `sys_root`, in the order to try them: per device, lowest interface first.
pub fn find_ppk2_ports(sys_root: &Path) -> Vec<UsbSerialPort> {
    list_usb_serial_ports(sys_root).into_iter().filter(|p| p.vid == PPK2_VID && p.pid == PPK2_PID).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Builds `<root>/devices/usbN/<dev>/<dev>:1.<ifc>/tty/<tty>` and the class link, as the kernel does.
    fn add_port(root: &Path, dev: &str, vid: &str, pid: &str, serial: &str, ifc: u8, tty: &str) {
        let usb = root.join("devices/pci0000:00/usb1").join(dev);
        fs::create_dir_all(&usb).unwrap();
        fs::write(usb.join("idVendor"), format!("{vid}\n")).unwrap();
        fs::write(usb.join("idProduct"), format!("{pid}\n")).unwrap();
        fs::write(usb.join("serial"), format!("{serial}\n")).unwrap();
        fs::write(usb.join("product"), "PPK2\n").unwrap();
        let interface = usb.join(format!("{dev}:1.{ifc}"));
        fs::create_dir_all(interface.join("tty").join(tty)).unwrap();
        fs::write(interface.join("bInterfaceNumber"), format!("{ifc:02x}\n")).unwrap();
        let class = root.join("class/tty");
        fs::create_dir_all(&class).unwrap();
        symlink(interface.join("tty").join(tty), class.join(tty)).unwrap();
        symlink(&interface, interface.join("tty").join(tty).join("device")).unwrap();
    }

    #[test]
    fn finds_ppk2_ports_lowest_interface_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // Added in the "wrong" order on purpose; a CP2102 on another port; a virtual console tty.
        add_port(root, "1-2", "1915", "c00a", "C4F1A2B3", 2, "ttyACM1");
        add_port(root, "1-2", "1915", "c00a", "C4F1A2B3", 0, "ttyACM0");
        add_port(root, "1-3", "10c4", "ea60", "0001", 0, "ttyUSB0");
        fs::create_dir_all(root.join("devices/virtual/tty/tty0")).unwrap();
        symlink(root.join("devices/virtual/tty/tty0"), root.join("class/tty/tty0")).unwrap();

        let all = list_usb_serial_ports(root);
        assert_eq!(all.len(), 3, "{all:?}");
        let ppk = find_ppk2_ports(root);
        let names: Vec<&str> = ppk.iter().map(|p| p.tty.as_str()).collect();
        assert_eq!(names, ["ttyACM0", "ttyACM1"]);
        assert_eq!(ppk[0].interface, Some(0));
        assert_eq!(ppk[1].interface, Some(2));
        assert_eq!(ppk[0].serial.as_deref(), Some("C4F1A2B3"));
        assert_eq!(ppk[0].dev_path, Path::new("/dev/ttyACM0"));
        assert_eq!((ppk[0].vid, ppk[0].pid), (PPK2_VID, PPK2_PID));
    }

    #[test]
    fn no_sysfs_means_no_ports() {
        let dir = tempfile::tempdir().unwrap();
        assert!(find_ppk2_ports(dir.path()).is_empty());
        assert!(find_ppk2_ports(&dir.path().join("missing")).is_empty());
    }
}
