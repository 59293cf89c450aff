//! Functions that are not NVIDIA's, and what the host does with them: an NVMe drive
//! sharing a GPU's IOMMU group (a board without ACS), its block devices as the kernel
//! lays them out under the function (`nvme/nvme0/nvme0n1/nvme0n1p1`, each with `dev` and
//! `uevent`), a network interface, and mounts in `/proc/1/mounts` (the host's) or another
//! process's mount table (a container's).

use super::{link, real_dir, write, Function, SimHost, MEM64_PREFETCH};

impl Function {
    /// A Samsung NVMe SSD (144d:a80a, class 0x010802) on the `nvme` driver.
    pub fn nvme(bdf: &str, group: u32) -> Self {
        Self {
            bdf: bdf.to_owned(),
            vendor: 0x144d,
            device: 0xa80a,
            class: 0x010802,
            driver: Some("nvme".to_owned()),
            group: Some(group),
            numa: 0,
            bars: vec![(0, 16 * 1024, MEM64_PREFETCH)],
            pcie: true,
        }
    }

    /// A Mellanox ConnectX-7 port (15b3:1021, class 0x020000) on `mlx5_core`.
    pub fn nic(bdf: &str, group: u32) -> Self {
        Self {
            bdf: bdf.to_owned(),
            vendor: 0x15b3,
            device: 0x1021,
            class: 0x020000,
            driver: Some("mlx5_core".to_owned()),
            group: Some(group),
            numa: 0,
            bars: vec![(0, 32 << 20, MEM64_PREFETCH)],
            pcie: true,
        }
    }
}

impl SimHost {
    /// An H100 PCIe on `nvidia` whose IOMMU group 40 also holds an NVMe drive
    /// (0000:42:00.0, on `nvme`, partition `/dev/nvme0n1p1`), as on a board without ACS.
    pub fn gpu_with_nvme_in_group() -> Self {
        let mut host = Self::gpu_bound_to_nvidia();
        host.add(&Function::nvme("0000:42:00.0", 40));
        for (sub, name) in [
            ("nvme/nvme0", "nvme0"),
            ("nvme/nvme0/nvme0n1", "nvme0n1"),
            ("nvme/nvme0/nvme0n1/nvme0n1p1", "nvme0n1p1"),
        ] {
            host.add_device_node("0000:42:00.0", sub, name);
        }
        host
    }

    /// Lays out a device the kernel made for a function: `<function>/<sub>/dev` and
    /// `uevent` (with `DEVNAME`), a `device` link to its parent, and the node `/dev/<devname>`.
    pub fn add_device_node(&self, bdf: &str, sub: &str, devname: &str) {
        let dir = self.path(&real_dir(bdf)).join(sub);
        write(&dir.join("dev"), "259:1\n");
        write(
            &dir.join("uevent"),
            &format!("MAJOR=259\nMINOR=1\nDEVNAME={devname}\n"),
        );
        // As in sysfs, `device` links back up: a walk that followed links would loop.
        link("..", &dir.join("device"));
        write(&self.path(&format!("dev/{devname}")), "");
    }

    /// Gives a function a network interface, `up` or not (`<function>/net/<name>/operstate`).
    pub fn add_net_interface(&self, bdf: &str, name: &str, up: bool) {
        let dir = self.path(&real_dir(bdf)).join("net").join(name);
        write(&dir.join("operstate"), if up { "up\n" } else { "down\n" });
    }

    /// Mounts a device node (`/dev/nvme0n1p1`) at `at` on the host: a line in
    /// `/proc/1/mounts`, PID 1's mount table.
    pub fn mount(&self, dev: &str, at: &str) {
        self.mount_in(1, dev, at);
    }

    /// Mounts a device node at `at` in the mount namespace of process `pid` (a container's):
    /// a line in `/proc/<pid>/mounts`.
    pub fn mount_in(&self, pid: u32, dev: &str, at: &str) {
        let path = self.path(&format!("proc/{pid}/mounts"));
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(&format!("{dev} {at} ext4 rw,relatime 0 0\n"));
        write(&path, &text);
    }

    /// Removes a function's `resource` file, as a sysfs that does not show it (or a copy
    /// of one without it) would leave it: its BAR sizes are unknown.
    pub fn remove_resource(&self, bdf: &str) {
        std::fs::remove_file(self.path(&real_dir(bdf)).join("resource")).expect("rm resource");
    }

    /// Stacks a device-mapper device `dm` (`dm-0`) on a device of a function (`sub`, as
    /// given to [`SimHost::add_device_node`]), as LVM does: `<sub>/holders/<dm>` links to
    /// `/sys/devices/virtual/block/<dm>`, which has its `uevent` and `holders/`, and
    /// `/dev/mapper/<name>` links to `/dev/<dm>`.
    pub fn add_dm_holder(&self, bdf: &str, sub: &str, dm: &str, name: &str) {
        let virt = self.path(&format!("sys/devices/virtual/block/{dm}"));
        write(&virt.join("dev"), "253:0\n");
        write(
            &virt.join("uevent"),
            &format!("MAJOR=253\nMINOR=0\nDEVNAME={dm}\n"),
        );
        std::fs::create_dir_all(virt.join("holders")).expect("mkdir holders");
        link(
            &format!("../../devices/virtual/block/{dm}"),
            &self.path(&format!("sys/class/block/{dm}")),
        );
        let depth = real_dir(bdf).split('/').count() + sub.split('/').count() + 1;
        link(
            &format!("{}sys/devices/virtual/block/{dm}", "../".repeat(depth)),
            &self.path(&real_dir(bdf)).join(sub).join("holders").join(dm),
        );
        write(&self.path(&format!("dev/{dm}")), "");
        link(
            &format!("../{dm}"),
            &self.path(&format!("dev/mapper/{name}")),
        );
    }

    /// Uses a device node (`/dev/dm-1`) as swap: a line in `/proc/swaps`.
    pub fn swap_on(&self, dev: &str) {
        let path = self.path("proc/swaps");
        let mut text = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| "Filename\tType\tSize\tUsed\tPriority\n".to_owned());
        text.push_str(&format!("{dev}\tpartition\t8388604\t0\t-2\n"));
        write(&path, &text);
    }
}
