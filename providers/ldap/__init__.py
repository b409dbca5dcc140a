"""LDAP / Active Directory provider (search-then-bind, LDAPv3 spoken on the event loop).

Sample configuration::

    providers:
      - id: corp-ldap
        type: ldap
        display_name: Corporate directory
        urls: [ldaps://ldap1.corp.example:636, ldaps://ldap2.corp.example:636]
        bind_dn: cn=mcp-broker,ou=services,dc=corp,dc=example
        bind_password: ${LDAP_BIND_PASSWORD}
        user_base_dn: ou=people,dc=corp,dc=example
        user_filter: "(&(objectClass=inetOrgPerson)(uid={username}))"
        group_base_dn: ou=groups,dc=corp,dc=example
        group_name_attribute: cn
"""

from providers.ldap.config import LdapProviderConfig

__all__ = ["LdapProviderConfig"]
