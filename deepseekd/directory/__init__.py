"""The site's directory (LDAP / Active Directory): the only room that speaks LDAP."""
