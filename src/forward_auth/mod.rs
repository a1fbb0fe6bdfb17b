//! Forward authentication for reverse proxies (feature `forward-auth`).
